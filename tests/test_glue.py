"""GLUE pipeline: configs compose, data and metrics, a tiny end-to-end run through all three paths, resume."""
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from safetensors.torch import load_file

import ibert.runs  # noqa: F401  (the configs' resolvers)
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


@pytest.mark.parametrize("group", ["path", "recipe", "distill", "experiment", "sweep", "logger", "hparams_search"])
def test_every_other_config_composes(group):
    for option in group_options(group):
        cfg = compose_cfg([f"{group}={option}"])
        OmegaConf.resolve(cfg)
        assert cfg.recipe.batch_size > 0


@pytest.mark.parametrize("launcher,target", [
    ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
])
def test_launcher_configs_compose(launcher, target):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target


def test_hparams_search_is_optuna_over_the_qat_learning_rate():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hparams_search=qat_lr"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.path.name == "qat"
    assert cfg.hydra.sweeper.params["recipe.qat_lr"] == "tag(log, interval(5e-7, 2e-6))"
    assert cfg.optimized_metric == "integer-only"


def test_top_level_overrides():
    cfg = compose_cfg(["quant_mode=true", "force_dequant=gelu"])
    assert cfg.quant_mode is True and cfg.force_dequant == "gelu"
    assert compose_cfg(["path=qat"]).quant_mode is True
    assert compose_cfg([]).quant_mode is False


@pytest.mark.parametrize("overrides,run_dir", [
    (["task=sst2"], "runs/sst2/minilm/fp32-none-seed42"),
    (["task=sst2", "quant_mode=true"], "runs/sst2/minilm/qat-none-seed42"),
    (["experiment=sst2_minilm_cpu"], "runs/sst2/minilm/qat-none-seed42"),
    (["task=rte", "path=qat", "seed=3", "recipe.qat_lr=1e-6", "threads=2"], "runs/rte/minilm/qat-none-seed3,recipe.qat_lr=1e-6"),
    (["task=stsb", "quant_mode=true", "distill=logits"], "runs/stsb/minilm/qat-none-seed42,distill=logits"),
])
def test_run_directory_is_named_by_its_config(overrides, run_dir):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert cfg.hydra.run.dir == run_dir
    assert cfg.hydra.sweep.subdir == run_dir.rsplit("/", 1)[1]
    assert cfg.path.name == run_dir.rsplit("/", 1)[1].split("-")[0]


def test_device_choice():
    from ibert.placement import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


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


def test_agreement_between_two_models_predictions():
    assert glue.agreement(glue.get_task("sst2"), np.array([1, 0, 1, 1]), np.array([1, 1, 1, 1])) == 75.0
    scores = np.array([0.5, 2.0, 3.0, 4.5])
    assert glue.agreement(glue.get_task("stsb"), 2 * scores + 1, scores) == pytest.approx(100.0)
    assert glue.agreement(glue.get_task("stsb"), -scores, scores) == pytest.approx(-100.0)


@needs_glue
@pytest.mark.parametrize("task_name", ["cola", "mrpc", "sst2"])
def test_metrics_on_real_dev_labels_equal_the_definitions(task_name):
    """scikit-learn's metrics (what compute_metrics uses) against their definitions from the confusion counts."""
    task = glue.get_task(task_name)
    y = np.asarray(glue.load_split(task, "dev", GLUE_DIR)["label"])
    for seed in range(3):
        p = np.where(np.random.default_rng(seed).random(len(y)) < 0.8, y, 1 - y)  # 80% right
        tp, tn = float(((p == 1) & (y == 1)).sum()), float(((p == 0) & (y == 0)).sum())
        fp, fn = float(((p == 1) & (y == 0)).sum()), float(((p == 0) & (y == 1)).sum())
        expected = {"accuracy": (tp + tn) / len(y), "f1": 2 * tp / (2 * tp + fp + fn),
                    "matthews_correlation": (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))}
        got = glue.compute_metrics(task, p, y)
        assert got == pytest.approx({m: 100 * expected[m] for m in task.metrics}, abs=1e-9)


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
            "recipe.eval_every=3", "logger.every_n_steps=3", "compile=false", f"hydra.run.dir={out}"]


def logged(run_dir: Path) -> list[tuple[str, int, str, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(r["stage"], int(r["step"]), r["key"], float(r["value"])) for r in csv.DictReader(f)]


def test_tiny_end_to_end_all_paths(tiny_setup, tmp_path):
    from ibert.training import run

    model_dir, glue_dir = tiny_setup
    cfg = compose_cfg([o for o in tiny_overrides(model_dir, glue_dir, tmp_path) if not o.startswith("hydra")]
                      + [f"output_dir={tmp_path}"])
    results = run(cfg)
    assert set(results["metrics"]) == {"fp32", "fake-quant", "integer-only"}
    assert results["metrics"]["integer-only"] == results["metrics"]["fake-quant"]
    assert results["integer_equals_fake_quant"] and results["integer_agrees_with_fake_quant"] == {"dev": 24}
    agree = results["agreement_with_fp32"]
    assert set(agree) == {"fake-quant", "integer-only"} and agree["integer-only"] == agree["fake-quant"]
    assert 0.0 <= agree["integer-only"]["dev"] <= 100.0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"] == results["metrics"] and saved["git_commit"] and saved["seed"] == 42
    assert (tmp_path / "integer" / "integer_model.safetensors").exists()
    rows = logged(tmp_path)
    for stage in ("fp32", "qat"):
        steps = {(step, key) for st, step, key, _ in rows if st == stage}
        assert {(s, k) for s in (3, 6) for k in ("loss", "lr", "grad_norm", "epoch", "dev/accuracy")} == steps
    assert ("eval", 0, "integer-only/dev/accuracy", results["metrics"]["integer-only"]["dev"]["accuracy"]) in rows
    again = run(cfg)  # the same config: every stage is reused
    assert again["metrics"] == results["metrics"] and "fp32_train_s" not in again["times_s"]
    check_evaluate_and_predict(tmp_path, glue_dir, results)
    ptq = run(compose_cfg([o for o in tiny_overrides(model_dir, glue_dir, tmp_path) if not o.startswith("hydra")]
                          + [f"output_dir={tmp_path / 'ptq_run'}", "path=ptq", "recipe.calibration_samples=20",
                             f"init_from={tmp_path / 'fp32' / 'model'}"]))
    assert ptq["metrics"]["fp32"] == results["metrics"]["fp32"] and ptq["integer_equals_fake_quant"]
    assert "ptq_calibration_s" in ptq["times_s"] and (tmp_path / "ptq_run" / "ptq" / "DONE").exists()
    smooth = run(compose_cfg([o for o in tiny_overrides(model_dir, glue_dir, tmp_path) if not o.startswith("hydra")]
                             + [f"output_dir={tmp_path / 'ptq_smooth'}", "path=ptq", "recipe.calibration_samples=20",
                                f"init_from={tmp_path / 'fp32' / 'model'}", "recipe.smoothquant_alpha=0.5",
                                "recipe.smoothquant_gelu_alpha=1.0"]))
    assert smooth["integer_equals_fake_quant"]
    identity = lambda d: json.loads((tmp_path / d / "ptq" / "identity.json").read_text())
    assert identity("ptq_smooth")["recipe.smoothquant_gelu_alpha"] == 1.0
    assert "recipe.smoothquant_gelu_alpha" not in identity("ptq_run")  # unset: older stages' identities still match
    for override, stage in (("recipe.qat_lr=3e-6", "qat"), ("recipe.lr=1e-4", "fp32"), ("seed=1", "fp32")):
        changed = compose_cfg([o for o in tiny_overrides(model_dir, glue_dir, tmp_path) if not o.startswith("hydra")]
                              + [f"output_dir={tmp_path}", override])
        with pytest.raises(ValueError, match=f"{tmp_path / stage} was run with another config "
                                             f"\\({override.split('=')[0]}: "):
            run(changed)


def check_evaluate_and_predict(run_dir, glue_dir, results):
    """scripts/evaluate.py and scripts/predict.py on a finished run: the engine's dev metrics as the run had them."""
    from ibert.scripts import predict
    from ibert.scripts.evaluate import evaluate

    def evaluate_with(*overrides):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return evaluate(compose(config_name="evaluate", overrides=[f"model_dir={run_dir}", f"glue_dir={glue_dir}",
                                                                       "task=sst2", *overrides]))

    on_dev = evaluate_with()
    assert on_dev["path"] == "integer-only" and on_dev["model_dir"] == str(run_dir / "integer")
    assert on_dev["metrics"] == results["metrics"]["integer-only"]["dev"]
    assert json.loads((run_dir / "integer" / "eval" / "sst2-dev.json").read_text())["metrics"] == on_dev["metrics"]
    on_file = evaluate_with(f"data_file={glue_dir / 'SST-2' / 'dev.tsv'}", f"output={run_dir / 'file.json'}",
                            f"model_dir={run_dir / 'fp32' / 'model'}")
    assert on_file["path"] == "fp32" and on_file["metrics"] == results["metrics"]["fp32"]["dev"]
    with pytest.raises(ValueError, match="task stsb needs 1"):
        evaluate_with("task=stsb")
    out = run_dir / "predictions.jsonl"
    predict.main(["--model", str(run_dir), "--task", "sst2", "good great fine", "bad awful poor", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == [["good great fine"], ["bad awful poor"]]
    assert all(r["label"] in ("0", "1") and abs(sum(r["probabilities"]) - 1) < 1e-5 for r in rows)


# Runs train.py and SIGKILLs it right after it writes the checkpoint of step AT of stage STAGE.
KILL_AT_CHECKPOINT = """
import os, runpy, signal, sys
import torch
from ibert import atomic
stage, at = sys.argv[1], int(sys.argv[2])
write = atomic.write_file
def write_then_die(path, fn):
    write(path, fn)
    if path.name == "last.pt" and path.parent.name == stage and torch.load(path, weights_only=True)["step"] == at:
        os.kill(os.getpid(), signal.SIGKILL)
atomic.write_file = write_then_die
sys.argv = ["train.py", *sys.argv[3:]]
runpy.run_path("scripts/train.py", run_name="__main__")
"""


def saved_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    files = {"fp32": "fp32/model/model.safetensors", "qat": "qat/model/model.safetensors",
             "integer": "integer/integer_model.safetensors"}
    return {f"{stage}/{k}": v for stage, f in files.items() for k, v in load_file(run_dir / f).items()}


def test_ptq_chooses_its_smoothing_on_held_out_training_examples(tiny_setup, tmp_path):
    from ibert.training import run

    model_dir, glue_dir = tiny_setup
    base = [o for o in tiny_overrides(model_dir, glue_dir, tmp_path) if not o.startswith("hydra")]
    run(compose_cfg(base + [f"output_dir={tmp_path / 'fp32'}", "path=fp32", "quant_mode=false"]))
    ptq = base + ["path=ptq", "recipe.calibration_samples=20", f"init_from={tmp_path / 'fp32' / 'fp32' / 'model'}"]
    chose = run(compose_cfg(ptq + [f"output_dir={tmp_path / 'chosen'}", "recipe.smoothquant_alpha=[0.5,1.0]",
                                   "recipe.smoothquant_gelu_alpha=[null,1.0]", "recipe.selection_samples=16"]))
    selection = chose["smoothing_selection"]
    assert [(c["smoothquant_alpha"], c["smoothquant_gelu_alpha"]) for c in selection["candidates"]] == [
        (0.5, None), (0.5, 1.0), (1.0, None), (1.0, 1.0)]
    best = min(selection["candidates"], key=lambda c: c["divergence"])
    assert selection["chosen"] == {k: best[k] for k in ("smoothquant_alpha", "smoothquant_gelu_alpha")}
    assert chose["integer_equals_fake_quant"] and "smoothing_selection_s" in chose["times_s"]
    identity = json.loads((tmp_path / "chosen" / "ptq" / "identity.json").read_text())
    assert identity["recipe.selection_samples"] == 16 and identity["recipe.smoothquant_alpha"] == [0.5, 1.0]
    fixed = [f"recipe.smoothquant_gelu_alpha={'null' if best['smoothquant_gelu_alpha'] is None else 1.0}",
             f"recipe.smoothquant_alpha={best['smoothquant_alpha']}"]
    given = run(compose_cfg(ptq + [f"output_dir={tmp_path / 'given'}", *fixed]))  # the same calibration
    assert given["metrics"] == chose["metrics"] and "smoothing_selection" not in given
    assert chose["agreement_with_fp32"] == given["agreement_with_fp32"]
    with pytest.raises(ValueError, match="needs recipe.selection_samples > 0"):
        run(compose_cfg(ptq + [f"output_dir={tmp_path / 'none'}", "recipe.smoothquant_alpha=[0.5,1.0]",
                               "recipe.selection_samples=0"]))
    with pytest.raises(ValueError, match="recipe.smoothquant_alpha is an empty list"):
        run(compose_cfg(ptq + [f"output_dir={tmp_path / 'empty'}", "recipe.smoothquant_alpha=[]"]))


def test_resume_after_kill_is_exact(tiny_setup, tmp_path):
    """Killed at a checkpoint of each stage and started again, a run ends with the same parameters, activation
    ranges and integer engine, bit for bit, as a run never interrupted."""
    model_dir, glue_dir = tiny_setup
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def train(out, *kill):
        overrides = [o.replace("recipe.max_steps=6", "recipe.max_steps=14") for o in tiny_overrides(model_dir, glue_dir, out)]
        cmd = [sys.executable, "-c", KILL_AT_CHECKPOINT, *kill, *overrides] if kill else \
            [sys.executable, str(ROOT / "scripts" / "train.py"), *overrides]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)

    uninterrupted = train(tmp_path / "once")
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-3000:] + uninterrupted.stderr[-3000:]
    out = tmp_path / "killed"
    assert train(out, "fp32", "4").returncode == -signal.SIGKILL
    second = train(out, "qat", "4")
    assert second.returncode == -signal.SIGKILL and "[fp32] resumed from step 4 of 14" in second.stdout + second.stderr
    resumed = train(out)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[qat] resumed from step 4 of 6" in resumed.stdout + resumed.stderr
    expected, got = saved_tensors(tmp_path / "once"), saved_tensors(out)
    assert expected.keys() == got.keys() and any(k.endswith("x_max") for k in got)
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    once, again = (json.loads((d / "results.json").read_text())["metrics"] for d in (tmp_path / "once", out))
    assert once == again
    assert logged(tmp_path / "once") == logged(out)  # each step logged once, with the same values


def test_data_parallel_two_processes_stay_in_sync_and_resume_exactly(tiny_setup, tmp_path):
    """torchrun, 2 CPU processes (gloo), the global batch split between them: the ranks end every stage with the
    same parameters (the run checks it and fails otherwise), and a run killed at a checkpoint of rank 0 and started
    again ends as the uninterrupted one, bit for bit."""
    model_dir, glue_dir = tiny_setup
    killer = tmp_path / "kill_at_checkpoint.py"
    killer.write_text(KILL_AT_CHECKPOINT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def torchrun(out, *kill):
        script = [str(killer), *kill] if kill else [str(ROOT / "scripts" / "train.py")]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *script,
               *tiny_overrides(model_dir, glue_dir, out), "threads=1"]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)

    once = torchrun(tmp_path / "once")
    assert once.returncode == 0, once.stdout[-3000:] + once.stderr[-3000:]
    results = json.loads((tmp_path / "once" / "results.json").read_text())
    assert results["world_size"] == 2 and results["metrics"]["integer-only"] == results["metrics"]["fake-quant"]
    out = tmp_path / "killed"
    assert torchrun(out, "qat", "4").returncode != 0
    assert torch.load(out / "qat" / "last.pt", weights_only=True)["step"] == 4  # killed there
    resumed = torchrun(out)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[qat] resumed from step 4 of 6" in resumed.stdout + resumed.stderr
    expected, got = saved_tensors(tmp_path / "once"), saved_tensors(out)
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []


def test_joblib_sweep_runs_two_jobs(tiny_setup, tmp_path):
    """`-m hydra/launcher=joblib`: two seeds as two parallel jobs, each in its own directory with its results."""
    model_dir, glue_dir = tiny_setup
    overrides = [o for o in tiny_overrides(model_dir, glue_dir, tmp_path) if not o.startswith("hydra.run.dir")]
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           f"hydra.sweep.dir={tmp_path}", "seed=1,2", "threads=1", *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = {json.loads(f.read_text())["seed"]: f.parent for f in tmp_path.rglob("results.json")}
    name = "qat-none-seed{},recipe.batch_size=8,recipe.max_steps=6,recipe.qat_max_steps=6"
    assert results == {seed: tmp_path / name.format(seed) for seed in (1, 2)}


def test_distillation_loss():
    from types import SimpleNamespace as NS

    from ibert.training import distillation_loss

    torch.manual_seed(0)
    s, t, task_loss = torch.randn(4, 3), torch.randn(4, 3), torch.tensor(0.7)
    hs, ht = [torch.randn(4, 5, 8) for _ in range(2)], [torch.randn(4, 5, 8) for _ in range(2)]
    mask = torch.ones(4, 5, dtype=torch.long)
    mask[1, 3:] = 0
    out, teacher = NS(logits=s, loss=task_loss, hidden_states=hs), NS(logits=t, hidden_states=ht)
    cfg = lambda **kw: OmegaConf.create({"logits": 0.5, "hidden": 0.0, "temperature": 2.0, **kw})
    assert distillation_loss(out, teacher, mask, cfg(logits=0.0), False) == task_loss
    p, q = torch.softmax(t / 2, -1), torch.softmax(s / 2, -1)
    kl = (p * (p.log() - q.log())).sum(-1).mean() * 4
    torch.testing.assert_close(distillation_loss(out, teacher, mask, cfg(), False), 0.5 * task_loss + 0.5 * kl)
    same = NS(logits=s, hidden_states=hs)
    torch.testing.assert_close(distillation_loss(out, same, mask, cfg(hidden=1.0), False), 0.5 * task_loss)
    torch.testing.assert_close(distillation_loss(out, teacher, mask, cfg(), True),
                               0.5 * task_loss + 0.5 * ((s - t) ** 2).mean())
    with_hidden = distillation_loss(out, teacher, mask, cfg(hidden=2.0), False)
    expected = sum(((a - b) ** 2 * mask[..., None]).sum() / (mask.sum() * 8) for a, b in zip(hs, ht)) / 2
    torch.testing.assert_close(with_hidden, 0.5 * task_loss + 0.5 * kl + 2.0 * expected)
    hs[0][1, 4] += 100.0  # a padding position: no effect
    torch.testing.assert_close(distillation_loss(out, teacher, mask, cfg(hidden=2.0), False), with_hidden)


def test_qat_with_distillation_runs_and_is_recorded(tiny_setup, tmp_path):
    from ibert.training import run

    model_dir, glue_dir = tiny_setup
    cfg = compose_cfg([o for o in tiny_overrides(model_dir, glue_dir, tmp_path) if not o.startswith("hydra")]
                      + [f"output_dir={tmp_path}", "distill=hidden"])
    results = run(cfg)
    assert results["integer_equals_fake_quant"]
    assert json.loads((tmp_path / "qat" / "identity.json").read_text())["recipe.distill"] == {
        "logits": 0.5, "hidden": 1.0, "temperature": 1.0}
    plain = [o for o in tiny_overrides(model_dir, glue_dir, tmp_path) if not o.startswith("hydra")]
    with pytest.raises(ValueError, match="recipe.distill: "):
        run(compose_cfg(plain + [f"output_dir={tmp_path}"]))
    run(compose_cfg(plain + [f"output_dir={tmp_path / 'plain'}", f"init_from={tmp_path / 'fp32' / 'model'}"]))
    qat_loss = lambda d: [v for st, step, key, v in logged(d) if (st, step, key) == ("qat", 3, "loss")]
    taught, untaught = qat_loss(tmp_path), qat_loss(tmp_path / "plain")
    assert len(taught) == len(untaught) == 1 and taught != untaught  # the same batches and dropout, another loss
