"""GLUE pipeline: configs compose, data and metrics, a tiny end-to-end run through all three paths, resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ibert import glue
from ibert.checkpoints import offline_minilm_path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
GLUE_DIR = Path(os.environ.get("GLUE_DIR", ROOT.parent / "shared" / "glue_data"))
needs_glue = pytest.mark.skipif(not (GLUE_DIR / "SST-2" / "dev.tsv").exists(), reason="no local GLUE copy")


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=["output_dir=/tmp/unused", *overrides])


def group_options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("task", group_options("task"))
@pytest.mark.parametrize("model", group_options("model"))
def test_every_task_and_model_composes(task, model):
    cfg = compose_cfg([f"task={task}", f"model={model}"])
    OmegaConf.resolve(cfg)
    assert cfg.task.name == task and glue.get_task(task).name == task
    assert cfg.recipe.max_seq_length == cfg.task.max_seq_length


@pytest.mark.parametrize("group", ["path", "recipe", "experiment", "sweep"])
def test_every_other_config_composes(group):
    for option in group_options(group):
        cfg = compose_cfg([f"{group}={option}"])
        OmegaConf.resolve(cfg)
        assert cfg.recipe.batch_size > 0


def test_top_level_overrides():
    cfg = compose_cfg(["quant_mode=true", "force_dequant=gelu"])
    assert cfg.quant_mode is True and cfg.force_dequant == "gelu"
    assert compose_cfg(["path=qat"]).quant_mode is True
    assert compose_cfg([]).quant_mode is False


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown GLUE task 'sst3'"):
        glue.get_task("sst3")


def test_missing_data_says_how_to_point_at_a_copy(tmp_path):
    with pytest.raises(FileNotFoundError, match="glue_dir"):
        glue.load_split(glue.get_task("rte"), "train", tmp_path)


def test_metrics():
    task = glue.get_task("cola")
    m = glue.compute_metrics(task, np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    assert m["matthews_correlation"] == pytest.approx(100 * 1 / np.sqrt(3))
    m = glue.compute_metrics(glue.get_task("mrpc"), np.array([1, 1, 0, 1]), np.array([1, 0, 0, 1]))
    assert m["f1"] == pytest.approx(80.0) and m["accuracy"] == pytest.approx(75.0)
    m = glue.compute_metrics(glue.get_task("stsb"), np.array([1.0, 2.0, 3.5]), np.array([1.0, 2.5, 3.0]))
    assert set(m) == {"pearson", "spearmanr"}


@pytest.mark.parametrize("group", [False, True])
def test_epoch_batches_cover_every_example_once(group):
    from ibert.training import epoch_batches
    lengths = np.random.default_rng(0).integers(1, 60, size=1000)
    batches = epoch_batches(lengths, 32, seed=3, group_by_length=group)
    assert len(batches) == 32  # ceil(1000 / 32)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert sorted(len(b) for b in batches)[1:] == [32] * 31
    assert all(np.array_equal(a, b) for a, b in zip(batches, epoch_batches(lengths, 32, 3, group)))
    padded = np.mean([lengths[b].max() for b in batches])
    if group:  # each batch pads to about its own length
        assert padded < 1.2 * lengths.mean()
    else:
        assert padded > 1.5 * lengths.mean()


@needs_glue
@pytest.mark.parametrize("task,rows", [("sst2", 872), ("mrpc", 408), ("stsb", 1500), ("cola", 1043), ("rte", 277),
                                       ("qnli", 5463)])
def test_real_dev_sets_parse(task, rows):
    data = glue.load_split(glue.get_task(task), "dev", GLUE_DIR)
    assert len(data["label"]) == rows
    assert all(isinstance(v, str) and v for c in glue.get_task(task).text_columns for v in data[c][:50])


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny random BERT with MiniLM's tokenizer, and a tiny SST-2 in the glue_data layout."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model_dir = root / "model"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64)).save_pretrained(model_dir)
    transformers.AutoTokenizer.from_pretrained(offline_minilm_path()).save_pretrained(model_dir)
    data = root / "glue" / "SST-2"
    data.mkdir(parents=True)
    words = ["good", "bad", "great", "awful", "fine", "poor", "nice", "dull"]
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("dev", 24)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            ws = rng.choice(words, 5)
            lines.append(f"{' '.join(ws)}\t{int(sum(w in ('good', 'great', 'fine', 'nice') for w in ws) > 2)}")
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return model_dir, root / "glue"


def tiny_overrides(model_dir, glue_dir, out):
    return [f"model.name_or_path={model_dir}", f"glue_dir={glue_dir}", "task=sst2", "quant_mode=true",
            "recipe.batch_size=8", "recipe.max_steps=6", "recipe.qat_max_steps=6", "recipe.checkpoint_every=2",
            "compile=false", f"hydra.run.dir={out}"]


def test_tiny_end_to_end_all_paths(tiny_setup, tmp_path):
    from ibert.training import run

    model_dir, glue_dir = tiny_setup
    cfg = compose_cfg([o for o in tiny_overrides(model_dir, glue_dir, tmp_path) if not o.startswith("hydra")]
                      + [f"output_dir={tmp_path}"])
    results = run(cfg)
    assert set(results["metrics"]) == {"fp32", "fake-quant", "integer-only"}
    assert results["metrics"]["integer-only"] == results["metrics"]["fake-quant"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"] == results["metrics"] and saved["git_commit"] and saved["seed"] == 42
    assert (tmp_path / "integer" / "integer_model.safetensors").exists()


def test_resume_after_kill(tiny_setup, tmp_path):
    model_dir, glue_dir = tiny_setup
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"),
           *[o.replace("recipe.max_steps=6", "recipe.max_steps=40") for o in tiny_overrides(model_dir, glue_dir, out)]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    ckpt = out / "fp32" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=False)["step"] >= 4:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=False)["step"]
    assert 4 <= killed_at < 18  # 48 examples, batch 8, 3 epochs: 18 steps
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"[fp32] resumed from step {killed_at} of " in again.stdout + again.stderr
    assert json.loads((out / "results.json").read_text())["metrics"]["integer-only"]
