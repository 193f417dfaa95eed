"""Gather GLUE runs into markdown tables, a bar chart and training curves.

    python scripts/report.py runs multirun [--out report.md] [--plot chart.png] [--curves curves/]
    python scripts/report.py results/glue_seeds/*.json --plot results/glue_seeds/seeds.png   # the committed copies
Inputs: folders (searched for `results.json` and the peer benchmark's `peers/<task>-dev.json`) or such files
themselves under any name. Tables: one row a run; then the runs that differ only in their seed, aggregated:
mean +- std (sample std, n seeds) of the main dev metric per path, and the integer - fp32 difference per seed
(mean +- std, min..max); then, per task, each implementation of the peer benchmark's GLUE variant over the
fp32 models it was given: per-seed scores, mean +- std, its difference to our fp32 per seed, and its agreement
with fp32. --plot: the aggregated means with their std as error bars, and below them each integer implementation's
difference to fp32 per task (ours and the peers' int8). --curves: one PNG a run from its
metrics.csv (the csv logger): loss, learning rate, gradient norm and the dev metrics against the step, per stage.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
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


def _result_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise SystemExit(f"{root}: no such file or folder")
    return sorted([*root.rglob("results.json"), *root.rglob("peers/*-dev.json")])


def collect_all(roots: list[str]) -> tuple[list[dict], list[dict]]:
    """(runs, peer results) from `roots`: a run's results.json has "metrics", a peer result "implementations"."""
    runs, peers = [], []
    for f in (f for root in roots for f in _result_files(Path(root))):
        r = json.loads(f.read_text())
        if "implementations" in r:
            peers.append(r)
        elif "metrics" in r and "config" in r:
            # a copy elsewhere (results/glue_seeds/) names its run by the folder it was written to
            r["dir"] = str(f.parent) if f.name == "results.json" else r["config"].get("output_dir") or str(f.parent)
            runs.append(r)
        else:
            raise SystemExit(f"{f}: neither a run's results.json nor a peer benchmark result")
    if not runs and not peers:
        raise SystemExit(f"no results.json or peer results under {roots}")
    return runs, peers


def collect(roots: list[str]) -> list[dict]:
    return collect_all(roots)[0]


def main_value(r: dict, path: str) -> float | None:
    """The task's main metric on its first dev split (MNLI: matched)."""
    per_split = r["metrics"].get(path)
    if per_split is None:
        return None
    return next(iter(per_split.values()))[r["main_metric"]]


def smoothquant(config: dict) -> str:
    """', smoothquant <alpha>' for a run with per-channel LayerNorm outputs, ', smoothquant gelu <alpha>' for
    per-channel i-GELU outputs (both, when both), else ''; a list of alphas to choose from: '<a>/<b>' (null: 'off')."""
    recipe = config.get("recipe") or {}
    alpha = lambda v: "off" if v is None else f"{v:g}"
    return "".join(f", smoothquant{site} " + ("/".join(map(alpha, v)) if isinstance(v, list) else alpha(v))
                   for key, site in (("smoothquant_alpha", ""), ("smoothquant_gelu_alpha", " gelu"))
                   if (v := recipe.get(key)) is not None)


def label(r: dict) -> str:
    c = r["config"]
    distill = (c.get("recipe") or {}).get("distill")
    extra = (", distilled (" + ", ".join(f"{k} {v:g}" for k, v in distill.items() if k in ("logits", "hidden") and v)
             + ")") if distill else ""
    return (f"{r['task']} ({c['model']['short']}, {c['path']['name']}, force_dequant={c['force_dequant']}{extra}"
            f"{smoothquant(c)})")


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


def integer_deltas(group: list[dict]) -> list[float]:
    """integer-only - fp32 of the main metric, per run that has both."""
    return [main_value(r, "integer-only") - main_value(r, "fp32") for r in group
            if main_value(r, "integer-only") is not None and main_value(r, "fp32") is not None]


def group_row(group: list[dict]) -> dict:
    """Per path: (mean, std, n) of the main metric; 'delta': the same of integer - fp32 per seed, with min, max."""
    row = {}
    for p in PATHS:
        vals = [v for v in (main_value(r, p) for r in group) if v is not None]
        if vals:
            row[p] = (*mean_std(vals), len(vals))
    deltas = integer_deltas(group)
    if deltas:
        row["delta"] = (*mean_std(deltas), len(deltas), min(deltas), max(deltas))
    agree = [a for a in (integer_agreement(r) for r in group) if a is not None]
    if agree:
        row["agreement"] = (*mean_std(agree), len(agree))
    return row


def integer_agreement(r: dict) -> float | None:
    """The integer-only model's agreement with fp32 on the first dev split (runs since session 15 record it)."""
    per_split = r.get("agreement_with_fp32", {}).get("integer-only")
    return next(iter(per_split.values())) if per_split else None


def seed_table(groups: list[list[dict]]) -> str:
    lines = ["| experiment | metric | seeds | fp32 | fake-quant | integer-only | integer - fp32 per seed | min .. max "
             "| integer's agreement with fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        row = group_row(g)
        cells = [(f"{row[p][0]:.2f} ± {row[p][1]:.2f}" if row[p][2] > 1 else f"{row[p][0]:.2f}") if p in row else ""
                 for p in PATHS]
        d = row.get("delta")
        delta = ([f"{d[0]:+.2f} ± {d[1]:.2f}" if d[2] > 1 else f"{d[0]:+.2f}", f"{d[3]:+.2f} .. {d[4]:+.2f}"] if d
                 else ["", ""])
        a = row.get("agreement")
        agree = (f"{a[0]:.2f}" + (f" (n={a[2]})" if a[2] < len(g) else "")) if a else ""
        seeds = ",".join(str(r["seed"]) for r in g)
        lines.append(f"| {label(g[0])} | {g[0]['main_metric']} | {seeds} (n={len(g)}) | {' | '.join(cells)} | "
                     f"{' | '.join(delta)} | {agree} |")
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


def peer_seed(r: dict) -> int:
    """The seed of the fp32 model a peer result was measured on (files before the field: from the run's name)."""
    if "seed" in r:
        return r["seed"]
    m = re.search(r"seed(\d+)", r["run"])
    return int(m.group(1)) if m else 0


def peer_score(r: dict, name: str) -> tuple[float, float] | None:
    """(main metric, minus our fp32's on the same model) of implementation `name` in peer result `r`, or None."""
    impls = r["implementations"]
    if name not in impls:
        return None
    metric = next(iter(impls["ours fp32"]["metrics"]))
    value = impls[name]["metrics"][metric]
    return value, value - impls["ours fp32"]["metrics"][metric]


def peers_tables(peers: list[dict]) -> str:
    """Per task: each implementation's main dev metric per seed, mean +- std, minus our fp32 per seed, agreement."""
    out = []
    for task in dict.fromkeys(r["task"] for r in peers):
        got = sorted((r for r in peers if r["task"] == task), key=peer_seed)
        metric = next(iter(got[0]["implementations"]["ours fp32"]["metrics"]))
        lines = [f"| {task} dev {metric} | " + " | ".join(f"seed {peer_seed(r)}" for r in got)
                 + " | mean ± std | minus fp32, per seed (mean ± std) | agreement with fp32 (mean) |",
                 "|---" * (len(got) + 4) + "|"]
        for name in dict.fromkeys(n for r in got for n in r["implementations"]):
            scores = [peer_score(r, name) for r in got]
            vals, deltas = zip(*(s for s in scores if s))
            (m, sd), (dm, dsd) = mean_std(list(vals)), mean_std(list(deltas))
            agree = statistics.fmean(r["implementations"][name]["agreement_with_fp32"] for r in got
                                     if name in r["implementations"])
            lines.append(f"| {name} | " + " | ".join(f"{s[0]:.2f}" if s else "" for s in scores)
                         + f" | {m:.2f} ± {sd:.2f} | {dm:+.2f} ± {dsd:.2f} ("
                         + ", ".join(f"{d:+.2f}" for d in deltas) + f") | {agree:.1f} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def fidelity(groups: list[list[dict]], peers: list[dict]) -> dict[str, dict[str, list[float]]]:
    """{task: {implementation: [its main metric - fp32's, per seed]}}: our integer-only runs (per seed group, from
    their results.json) and the peers' int8 (from the peer results, against our fp32 on the same model)."""
    out: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for g in groups:
        c = g[0]["config"]
        name = (f"ours {c['path']['name']}" + (", distilled" if (c.get("recipe") or {}).get("distill") else "")
                + smoothquant(c))
        if c["force_dequant"] != "none":
            name += f", force_dequant={c['force_dequant']}"
        deltas = integer_deltas(g)
        if deltas:
            out[g[0]["task"]][name] = deltas
    for r in sorted(peers, key=peer_seed):
        for name in r["implementations"]:
            if "int8" in name and not name.startswith("ours"):
                out[r["task"]].setdefault(name, []).append(peer_score(r, name)[1])
    return dict(out)


def plot(groups: list[list[dict]], path: str, peers: list[dict] = ()) -> None:
    """Top: bars of the mean main metric per path, the std over seeds as error bars. Bottom: per task, each
    integer implementation's difference to fp32 (mean bar, std error bar, one dot a seed)."""
    fid = fidelity(groups, list(peers))
    fig, (ax, dax) = plt.subplots(2, 1, figsize=(max(6, 1.6 * len(groups)), 8.5))
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
    names = sorted(dict.fromkeys(n for per_task in fid.values() for n in per_task),
                   key=lambda n: not n.startswith("ours"))  # ours first, then the peers
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    w, labelled = 0.8 / max(1, len(names)), set()
    for t, per_task in enumerate(fid.values()):
        for j, n in enumerate(names):
            if n in per_task:
                x = t - 0.4 + (j + 0.5) * w
                m, sd = mean_std(per_task[n])
                dax.bar(x, m, w, yerr=sd, capsize=2, color=colors[n], label=None if n in labelled else n)
                labelled.add(n)
                dax.plot([x] * len(per_task[n]), per_task[n], "k.", markersize=3)
    dax.axhline(0, color="k", linewidth=0.8)
    for band in (-0.3, 0.3):
        dax.axhline(band, color="gray", linewidth=0.6, linestyle="--")
    dax.set_xticks(range(len(fid)))
    dax.set_xticklabels(list(fid))
    dax.set_ylabel("main metric - fp32's, per seed\n(bar: mean, line: std, dots: seeds; dashed: ±0.3)")
    dax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    runs, peers = collect_all(args.roots)
    groups = seed_groups(runs)
    text = table(runs) + "\n\nOver seeds:\n\n" + seed_table(groups) if runs else ""
    if peers:
        text += "\n\nThe peers' int8 on the same fp32 models:\n\n" + peers_tables(peers)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(groups, args.plot, peers)
    if args.curves:
        Path(args.curves).mkdir(parents=True, exist_ok=True)
        for r in runs:
            if (Path(r["dir"]) / "metrics.csv").is_file():
                name = "_".join(Path(r["dir"]).parts[-3:]).replace("=", "-").replace(",", "_")
                plot_curves(r, Path(args.curves) / f"{name}.png")


if __name__ == "__main__":
    main()
