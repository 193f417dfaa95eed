"""scripts/sensitivity.py: the quantizer groups it widens, and its distances to fp32."""
import numpy as np
import torch

from ibert import IBertConfig, IBertForSequenceClassification, glue
from ibert.scripts import sensitivity
from tests.test_model import TINY


def test_groups_cover_every_narrow_quantizer_once():
    model = IBertForSequenceClassification(IBertConfig(**TINY, quant_mode=True))
    found = sensitivity.groups(model, 16, per_layer=False)
    assert "ibert.encoder.layer.*.attention.output.output_activation" in found
    assert "ibert.encoder.layer.*.attention.self.softmax" in found
    assert all(len(mods) == TINY["num_hidden_layers"] for name, mods in found.items() if ".layer.*." in name)
    narrow = [m for m in model.modules() if getattr(m, "quant_mode", False) and getattr(m, "bits", 99) < 16]
    widened = [m for mods in found.values() for m in mods]
    assert sorted(map(id, widened)) == sorted(map(id, narrow))  # the 16/22-bit ones are left alone
    per_layer = sensitivity.groups(model, 16, per_layer=True)
    assert "ibert.encoder.layer.1.intermediate.output_activation" in per_layer
    assert len(per_layer) == len(found) + (TINY["num_hidden_layers"] - 1) * (len(found) - 2)  # weights, embeddings
    assert sensitivity.groups(model, 8, per_layer=False) == {}


def test_scores_against_fp32():
    task = glue.get_task("sst2")
    ref = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    labels = np.array([0, 1, 1, 1])
    same = sensitivity.scores(task, ref, ref, labels)
    assert same == {"accuracy": 75.0, "agreement": 100.0, "divergence": 0.0}
    flipped = ref.clone()
    flipped[2] = torch.tensor([0.0, 1.0])
    other = sensitivity.scores(task, flipped, ref, labels)
    assert other["accuracy"] == 100.0 and other["agreement"] == 75.0 and other["divergence"] > 0
    stsb = glue.get_task("stsb")
    r = sensitivity.scores(stsb, ref[:, :1] + 0.5, ref[:, :1], np.array([1.0, 0.0, 2.0, 0.5]))
    assert abs(r["agreement"] - 100.0) < 1e-9 and abs(r["divergence"] - 0.25) < 1e-9
