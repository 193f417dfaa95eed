"""Gather GLUE runs (any folders holding results.json) into markdown tables, a bar chart and training curves.

    python scripts/report.py runs multirun [--out report.md] [--plot chart.png] [--curves curves/]
Tables: one row a run; then the runs that differ only in their seed, aggregated: mean +- std (sample std, n
seeds) of the main dev metric per path, and the integer - fp32 difference per seed (mean +- std, min..max).
--plot: the aggregated means with their std as error bars. --curves: one PNG a run from its metrics.csv (the
csv logger): loss, learning rate, gradient norm and the dev metrics against the step, per stage.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PATHS = ("fp32", "fake-quant", "integer-only")
# Config keys that do not make runs different experiments (the seed is what the aggregation is over; init_from
# points a PTQ or distillation run at its own seed's fp32 model).
NOT_THE_EXPERIMENT = {"seed", "init_from", "output_dir", "glue_dir", "threads", "compile", "device", "logger",
                      "optimized_metric"}


def collect(roots: list[str]) -> list[dict]:
    runs = []
    for root in roots:
        for f in sorted(Path(root).rglob("results.json")):
            r = json.loads(f.read_text())
            r["dir"] = str(f.parent)
            runs.append(r)
    if not runs:
        raise SystemExit(f"no results.json under {roots}")
    return runs


def main_value(r: dict, path: str) -> float | None:
    """The task's main metric on its first dev split (MNLI: matched)."""
    per_split = r["metrics"].get(path)
    if per_split is None:
        return None
    return next(iter(per_split.values()))[r["main_metric"]]


def label(r: dict) -> str:
    c = r["config"]
    distill = (c.get("recipe") or {}).get("distill")
    extra = (", distilled (" + ", ".join(f"{k} {v:g}" for k, v in distill.items() if k in ("logits", "hidden") and v)
             + ")") if distill else ""
    return f"{r['task']} ({c['model']['short']}, {c['path']['name']}, force_dequant={c['force_dequant']}{extra})"


def experiment(r: dict) -> str:
    """What a run is, seed aside: its config without the keys that do not change the experiment."""
    return json.dumps({k: v for k, v in r["config"].items() if k not in NOT_THE_EXPERIMENT}, sort_keys=True)


def seed_groups(runs: list[dict]) -> list[list[dict]]:
    """The runs grouped by experiment (first appearance first), each group ordered by seed."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(experiment(r), []).append(r)
    return [sorted(g, key=lambda r: r["seed"]) for g in groups.values()]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def group_row(group: list[dict]) -> dict:
    """Per path: (mean, std, n) of the main metric; 'delta': the same of integer - fp32 per seed, with min, max."""
    row = {}
    for p in PATHS:
        vals = [v for v in (main_value(r, p) for r in group) if v is not None]
        if vals:
            row[p] = (*mean_std(vals), len(vals))
    deltas = [main_value(r, "integer-only") - main_value(r, "fp32") for r in group
              if main_value(r, "integer-only") is not None and main_value(r, "fp32") is not None]
    if deltas:
        row["delta"] = (*mean_std(deltas), len(deltas), min(deltas), max(deltas))
    return row


def seed_table(groups: list[list[dict]]) -> str:
    lines = ["| experiment | metric | seeds | fp32 | fake-quant | integer-only | integer - fp32 per seed | min .. max |",
             "|---|---|---|---|---|---|---|---|"]
    for g in groups:
        row = group_row(g)
        cells = [f"{row[p][0]:.2f} ± {row[p][1]:.2f}" if p in row else "" for p in PATHS]
        d = row.get("delta")
        delta = [f"{d[0]:+.2f} ± {d[1]:.2f}", f"{d[3]:+.2f} .. {d[4]:+.2f}"] if d else ["", ""]
        seeds = ",".join(str(r["seed"]) for r in g)
        lines.append(f"| {label(g[0])} | {g[0]['main_metric']} | {seeds} (n={len(g)}) | {' | '.join(cells)} | "
                     f"{' | '.join(delta)} |")
    return "\n".join(lines)


def table(runs: list[dict]) -> str:
    lines = ["| run | metric | fp32 | fake-quant | integer-only | integer - fp32 | train time (s) | dir |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        vals = [main_value(r, p) for p in PATHS]
        delta = f"{vals[2] - vals[0]:+.2f}" if vals[0] is not None and vals[2] is not None else ""
        train = sum(v for k, v in r["times_s"].items() if k.endswith("train_s"))
        cells = [f"{v:.2f}" if v is not None else "" for v in vals]
        lines.append(f"| {label(r)} | {r['main_metric']} | {' | '.join(cells)} | {delta} | {train:.0f} | {r['dir']} |")
    return "\n".join(lines)


def plot(groups: list[list[dict]], path: str) -> None:
    """Bars of the mean main metric per path, the std over seeds as error bars."""
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.27
    rows = [group_row(g) for g in groups]
    for i, p in enumerate(PATHS):
        means = [row[p][0] if p in row else 0.0 for row in rows]
        stds = [row[p][1] if p in row else 0.0 for row in rows]
        ax.bar([x + (i - 1) * width for x in range(len(groups))], means, width, yerr=stds, capsize=3, label=p)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{label(g[0])}\nn={len(g)}".replace(" (", "\n(").replace(", ", ",\n") for g in groups],
                       fontsize=7)
    ax.set_ylabel("dev score (main metric), mean ± std over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def curves(run_dir: Path) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """{key: {stage: (steps, values)}} from a run's metrics.csv (training stages only)."""
    out = defaultdict(lambda: defaultdict(lambda: ([], [])))
    with open(run_dir / "metrics.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["stage"] != "eval":
                steps, values = out[r["key"]][r["stage"]]
                steps.append(int(r["step"]))
                values.append(float(r["value"]))
    return out


def plot_curves(r: dict, path: Path) -> None:
    data = curves(Path(r["dir"]))
    keys = [k for k in ("loss", "lr", "grad_norm") if k in data] + sorted(k for k in data if "/" in k)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for stage, (steps, values) in data[key].items():
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=stage)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"{label(r)}: {r['dir']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+")
    p.add_argument("--out", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--curves", default=None, help="a folder for the training curves (one PNG a run)")
    args = p.parse_args()
    runs = collect(args.roots)
    groups = seed_groups(runs)
    text = table(runs) + "\n\nOver seeds:\n\n" + seed_table(groups)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(groups, args.plot)
    if args.curves:
        Path(args.curves).mkdir(parents=True, exist_ok=True)
        for r in runs:
            if (Path(r["dir"]) / "metrics.csv").is_file():
                name = "_".join(Path(r["dir"]).parts[-3:]).replace("=", "-").replace(",", "_")
                plot_curves(r, Path(args.curves) / f"{name}.png")


if __name__ == "__main__":
    main()
