"""Gather GLUE runs (any folders holding results.json) into a markdown table, a bar chart and training curves.

    python scripts/report.py runs multirun [--out report.md] [--plot chart.png] [--curves curves/]
--curves: one PNG a run from its metrics.csv (the csv logger): loss, learning rate, gradient norm and the dev
metrics against the step, per stage.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PATHS = ("fp32", "fake-quant", "integer-only")


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
    return f"{r['task']} ({c['model']['short']}, force_dequant={c['force_dequant']})"


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


def plot(runs: list[dict], path: str) -> None:
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(runs)), 4))
    width = 0.27
    for i, p in enumerate(PATHS):
        vals = [main_value(r, p) or 0.0 for r in runs]
        ax.bar([x + (i - 1) * width for x in range(len(runs))], vals, width, label=p)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([label(r).replace(" (", "\n(").replace(", ", ",\n") for r in runs], fontsize=7)
    ax.set_ylabel("dev score (main metric)")
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
    text = table(runs)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(runs, args.plot)
    if args.curves:
        Path(args.curves).mkdir(parents=True, exist_ok=True)
        for r in runs:
            if (Path(r["dir"]) / "metrics.csv").is_file():
                name = "_".join(Path(r["dir"]).parts[-3:]).replace("=", "-").replace(",", "_")
                plot_curves(r, Path(args.curves) / f"{name}.png")


if __name__ == "__main__":
    main()
