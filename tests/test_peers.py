"""scripts/bench_peers.py: the peers get our fp32 model exactly, and each peer runs it."""
import argparse
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


def test_glue_accuracy_variant_on_a_tiny_run(tmp_path):
    """--glue: every implementation's dev metric and agreement with fp32, from a run directory's models."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    import argparse
    import json

    import transformers

    from ibert.checkpoints import offline_minilm_path
    from ibert.engine import convert_to_integer, save_integer

    tokenizer = transformers.AutoTokenizer.from_pretrained(offline_minilm_path())
    torch.manual_seed(0)
    config = {**TINY, "vocab_size": tokenizer.vocab_size, "num_labels": 2}
    run = tmp_path / "sst2" / "qat-none-seed1"
    fp32 = ibert.IBertForSequenceClassification(ibert.IBertConfig(**config)).eval()
    fp32.save_pretrained(run / "fp32" / "model")
    tokenizer.save_pretrained(run / "fp32" / "model")
    fake = ibert.IBertForSequenceClassification(ibert.IBertConfig(**config, quant_mode=True))
    fake.load_state_dict(fp32.state_dict(), strict=False)
    fake.train()
    words = ["good", "bad", "great", "awful", "fine", "dull"]
    with torch.no_grad():
        fake(**tokenizer([" ".join(words[i:] + words[:i]) for i in range(6)], return_tensors="pt", padding=True))
    save_integer(convert_to_integer(fake.eval()), run / "integer")
    (run / "results.json").write_text(json.dumps({"seed": 1}))
    data = tmp_path / "glue" / "SST-2"
    data.mkdir(parents=True)
    for split in ("train", "dev"):
        rows = [f"{' '.join(words[i % 6:] + words[:i % 6])}\t{i % 2}" for i in range(12)]
        (data / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    args = argparse.Namespace(glue="sst2", runs=[str(run)], glue_dir=str(tmp_path / "glue"), calibration_samples=8,
                              max_length=32, batch_size=5)
    bench_peers.glue_accuracy(args)
    result = json.loads((run / "peers" / "sst2-dev.json").read_text())
    impls = result["implementations"]
    assert set(impls) == {"ours fp32", "torch bf16", "ONNX Runtime int8", "OpenVINO default", "OpenVINO int8 (NNCF)",
                          "ours integer-only (QAT)"}
    assert impls["ours fp32"]["agreement_with_fp32"] == 100.0
    assert all(0 <= v["metrics"]["accuracy"] <= 100 for v in impls.values())


@pytest.mark.parametrize("size, layers_flag, hidden, layers",
                         [("roberta-base", None, 768, 12), ("minilm", None, 384, 6), ("minilm", 2, 384, 2)])
def test_model_shape_follows_size_and_layers(size, layers_flag, hidden, layers):
    """--size and --layers shape both the latency and the profile models."""
    config, vocab, label = bench_peers.model_shape(argparse.Namespace(size=size, layers=layers_flag))
    assert (config["hidden_size"], config["num_hidden_layers"]) == (hidden, layers)
    assert vocab <= config["vocab_size"] and f"{layers} layers" in label


def test_profile_assigns_every_openvino_node_in_a_layer_to_a_stage():
    """--profile: each node OpenVINO int8 runs inside an encoder layer belongs to one of the engine's stages, and
    every stage gets some."""
    pytest.importorskip("openvino")
    torch.manual_seed(0)
    twin = bench_peers.roberta_twin(ibert.IBertModel(ibert.IBertConfig(**TINY)).eval())
    compiled = bench_peers.openvino_compiled(twin, inputs(2, 8), [inputs() for _ in range(2)], threads=1,
                                             perf_count=True)
    request = compiled.create_infer_request()
    request.infer({k: v.numpy() for k, v in inputs().items()})
    stages = {bench_peers.ov_stage(node.node_name) for node in request.get_profiling_info()
              if node.status.name == "EXECUTED"}
    assert "other, in the layers" not in stages
    assert {stage for _, stage in bench_peers.OV_STAGES} <= stages
