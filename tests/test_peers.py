"""scripts/bench_peers.py: the peers get our fp32 model exactly, and each peer runs it."""
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import ibert
from ibert.scripts import bench_peers

TINY = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=40, type_vocab_size=2, pad_token_id=0)


def inputs(batch: int = 3, seq: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, seq // 2:] = 0
    return {"input_ids": torch.randint(3, 300, (batch, seq), generator=g) * mask, "attention_mask": mask,
            "token_type_ids": (torch.arange(seq) >= seq // 3).long().expand(batch, seq).contiguous()}


@pytest.mark.parametrize("cls", [ibert.IBertModel, ibert.IBertForSequenceClassification])
def test_roberta_twin_has_the_same_outputs(cls):
    torch.manual_seed(0)
    ours = cls(ibert.IBertConfig(**TINY, num_labels=3)).eval()
    x = inputs()
    with torch.no_grad():
        mine, theirs = ours(**x)[0], bench_peers.roberta_twin(ours)(**x)[0]
    valid = x["attention_mask"].bool() if cls is ibert.IBertModel else slice(None)
    torch.testing.assert_close(theirs[valid], mine[valid], rtol=0, atol=1e-5)


def test_every_peer_runs_the_model():
    """Each peer's output has the fp32 model's shape and follows it closely (int8 peers: cosine > 0.99)."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    ours = ibert.IBertForSequenceClassification(ibert.IBertConfig(**TINY, num_labels=3)).eval()
    twin = bench_peers.roberta_twin(ours)
    x = inputs()
    with torch.no_grad():
        reference = ours(**x).logits.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        impls = bench_peers.peers(twin, inputs(2, 8), [inputs() for _ in range(4)], Path(tmp), threads=1)
    assert set(impls) == {"transformers fp32", "torch bf16", "ONNX Runtime int8", "OpenVINO default",
                          "OpenVINO int8 (NNCF)"}
    for name, (run, isa) in impls.items():
        out = run(x)
        cosine = float((out * reference).sum() / np.linalg.norm(out) / np.linalg.norm(reference))
        assert out.shape == reference.shape and cosine > 0.99, (name, cosine)
        assert isa, name
