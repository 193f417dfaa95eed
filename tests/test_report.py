"""scripts/report.py: runs that differ only in their seed aggregate into mean +- std, and the charts are drawn."""
import json
import statistics
from pathlib import Path

import pytest

from ibert.scripts import report


def write_run(root: Path, task: str, seed: int, fp32: float, integer: float, qat_lr: float = 2e-6,
              agreement: float | None = None) -> Path:
    d = root / task / f"qat-none-seed{seed}" if qat_lr == 2e-6 else root / task / f"qat-none-seed{seed},lr{qat_lr}"
    d.mkdir(parents=True)
    config = {"task": {"name": task}, "model": {"short": "minilm"}, "path": {"name": "qat"}, "force_dequant": "none",
              "recipe": {"qat_lr": qat_lr}, "seed": seed, "output_dir": str(d), "threads": None}
    metrics = {"fp32": {"dev": {"accuracy": fp32}}, "fake-quant": {"dev": {"accuracy": integer}},
               "integer-only": {"dev": {"accuracy": integer}}}
    r = {"task": task, "main_metric": "accuracy", "metrics": metrics, "times_s": {"qat_train_s": 10.0}, "seed": seed,
         "config": config}
    if agreement is not None:
        r["agreement_with_fp32"] = {"fake-quant": {"dev": agreement}, "integer-only": {"dev": agreement}}
    (d / "results.json").write_text(json.dumps(r))
    return d


def test_runs_differing_only_in_seed_aggregate(tmp_path):
    scores = {1: (70.0, 69.5), 2: (72.0, 72.5), 3: (71.0, 70.0)}
    for seed, (fp32, integer) in scores.items():
        write_run(tmp_path, "rte", seed, fp32, integer)
    write_run(tmp_path, "rte", 1, 60.0, 61.0, qat_lr=1e-6)  # another experiment: its own group
    groups = report.seed_groups(report.collect([str(tmp_path)]))
    assert sorted(len(g) for g in groups) == [1, 3]
    three = next(g for g in groups if len(g) == 3)
    assert [r["seed"] for r in three] == [1, 2, 3]
    row = report.group_row(three)
    fp32 = [v[0] for v in scores.values()]
    deltas = [i - f for f, i in scores.values()]
    assert row["fp32"] == pytest.approx((statistics.fmean(fp32), statistics.stdev(fp32), 3))
    assert row["delta"] == pytest.approx((statistics.fmean(deltas), statistics.stdev(deltas), 3, -1.0, 0.5))
    text = report.seed_table(groups)
    assert "1,2,3 (n=3)" in text and "71.00 ± 1.00" in text and "-0.33 ± 0.76" in text and "-1.00 .. +0.50" in text
    assert "agreement" not in row


def test_the_seed_table_shows_the_integer_models_agreement_with_fp32(tmp_path):
    for seed, agree in ((1, 97.0), (2, 98.0)):
        write_run(tmp_path, "rte", seed, 70.0, 69.0, agreement=agree)
    write_run(tmp_path, "rte", 3, 70.0, 69.0)  # an older run, before results recorded it
    groups = report.seed_groups(report.collect([str(tmp_path)]))
    assert report.group_row(groups[0])["agreement"] == pytest.approx((97.5, statistics.stdev([97.0, 98.0]), 2))
    assert report.seed_table(groups).splitlines()[-1].endswith("| 97.50 (n=2) |")


def test_runs_from_each_seeds_own_fp32_model_aggregate(tmp_path):
    for seed in (1, 2):
        d = write_run(tmp_path, "rte", seed, 70.0, 69.0)
        r = json.loads((d / "results.json").read_text())
        r["config"]["init_from"] = f"multirun/rte/minilm/qat-none-seed{seed}/fp32/model"
        (d / "results.json").write_text(json.dumps(r))
    assert [len(g) for g in report.seed_groups(report.collect([str(tmp_path)]))] == [2]


def test_a_distilled_run_is_its_own_group_and_says_so(tmp_path):
    write_run(tmp_path, "rte", 1, 70.0, 69.0)
    d = write_run(tmp_path, "rte", 2, 70.0, 69.0)
    r = json.loads((d / "results.json").read_text())
    r["config"]["recipe"]["distill"] = {"logits": 0.5, "hidden": 0.0, "temperature": 1.0}
    (d / "results.json").write_text(json.dumps(r))
    groups = report.seed_groups(report.collect([str(tmp_path)]))
    assert sorted(len(g) for g in groups) == [1, 1]
    assert sorted(report.label(g[0]) for g in groups) == [
        "rte (minilm, qat, force_dequant=none)", "rte (minilm, qat, force_dequant=none, distilled (logits 0.5))"]


def test_charts_are_drawn(tmp_path):
    for seed in (1, 2):
        d = write_run(tmp_path, "mrpc", seed, 80.0 + seed, 80.0)
        (d / "metrics.csv").write_text("stage,step,key,value\nfp32,10,loss,0.7\nfp32,20,loss,0.5\n"
                                       "fp32,20,dev/accuracy,71.0\nqat,10,loss,0.4\neval,0,fp32/dev/accuracy,71.0\n")
    runs = report.collect([str(tmp_path)])
    report.plot(report.seed_groups(runs), str(tmp_path / "chart.png"))
    report.plot_curves(runs[0], tmp_path / "curves.png")
    assert (tmp_path / "chart.png").stat().st_size > 1000 and (tmp_path / "curves.png").stat().st_size > 1000
    assert report.curves(Path(runs[0]["dir"]))["loss"]["fp32"] == ([10, 20], [0.7, 0.5])


def write_peers(path: Path, task: str, seed: int, scores: dict[str, float], with_seed_field: bool = True) -> None:
    impls = {name: {"metrics": {"accuracy": v}, "agreement_with_fp32": 100.0 if name == "ours fp32" else 97.0,
                    "runs_on": "cpu"} for name, v in scores.items()}
    r = {"task": task, "run": f"multirun/{task}/minilm/qat-none-seed{seed}", "implementations": impls}
    if with_seed_field:
        r["seed"] = seed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r))


def test_peer_results_aggregate_per_implementation_over_seeds(tmp_path):
    write_peers(tmp_path / "a" / "peers" / "sst2-dev.json", "sst2", 2, {"ours fp32": 90.0, "OpenVINO int8": 89.0})
    write_peers(tmp_path / "sst2-peers-seed1.json", "sst2", 1, {"ours fp32": 91.0, "OpenVINO int8": 91.5},
                with_seed_field=False)  # an older file: the seed comes from the run's name
    runs, peers = report.collect_all([str(tmp_path / "a"), str(tmp_path / "sst2-peers-seed1.json")])
    assert runs == [] and len(peers) == 2
    text = report.peers_tables(peers)
    assert "| sst2 dev accuracy | seed 1 | seed 2 |" in text
    assert "| OpenVINO int8 | 91.50 | 89.00 | 90.25 ± 1.77 | -0.25 ± 1.06 (+0.50, -1.00) | 97.0 |" in text


def test_results_files_under_any_name_are_runs(tmp_path):
    d = write_run(tmp_path / "runs", "rte", 1, 70.0, 69.0)
    copy = tmp_path / "rte-qat-seed1.json"
    copy.write_text((d / "results.json").read_text())
    runs, peers = report.collect_all([str(copy)])
    assert peers == [] and len(runs) == 1 and runs[0]["dir"] == str(d)
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(SystemExit, match="other.json"):
        report.collect_all([str(tmp_path / "other.json")])
    with pytest.raises(SystemExit, match="no such file"):
        report.collect_all([str(tmp_path / "missing")])


def test_fidelity_holds_our_integer_runs_and_the_peers_int8_per_seed(tmp_path):
    write_run(tmp_path, "mrpc", 1, 80.0, 79.0)
    write_run(tmp_path, "mrpc", 2, 81.0, 81.5)
    write_peers(tmp_path / "p1.json", "mrpc", 1, {"ours fp32": 80.0, "torch bf16": 80.0, "ONNX Runtime int8": 78.0})
    runs, peers = report.collect_all([str(tmp_path)] + [str(tmp_path / "p1.json")])
    fid = report.fidelity(report.seed_groups(runs), peers)
    assert fid == {"mrpc": {"ours qat": [-1.0, 0.5], "ONNX Runtime int8": [-2.0]}}
    report.plot(report.seed_groups(runs), str(tmp_path / "chart.png"), peers)
    assert (tmp_path / "chart.png").stat().st_size > 1000


def test_smoothquant_runs_are_their_own_experiment(tmp_path):
    plain, smooth = write_run(tmp_path, "sst2", 1, 90.0, 89.0), write_run(tmp_path / "b", "sst2", 1, 90.0, 90.5)
    r = json.loads((smooth / "results.json").read_text())
    r["config"]["recipe"]["smoothquant_alpha"] = 1.0
    (smooth / "results.json").write_text(json.dumps(r))
    groups = report.seed_groups(report.collect([str(plain), str(smooth)]))
    assert sorted(report.label(g[0]) for g in groups) == [
        "sst2 (minilm, qat, force_dequant=none)", "sst2 (minilm, qat, force_dequant=none, smoothquant 1)"]
    assert set(report.fidelity(groups, [])["sst2"]) == {"ours qat", "ours qat, smoothquant 1"}
    r["config"]["recipe"]["smoothquant_gelu_alpha"] = 0.5
    assert report.label(r) == "sst2 (minilm, qat, force_dequant=none, smoothquant 1, smoothquant gelu 0.5)"
    r["config"]["recipe"].update(smoothquant_alpha=[0.5, 1.0], smoothquant_gelu_alpha=[None, 1.0])  # chosen per run
    assert report.label(r) == "sst2 (minilm, qat, force_dequant=none, smoothquant 0.5/1, smoothquant gelu off/1)"
