"""Charts from benchmarks/results.csv: speedup of the integer path over fp32, by shape, per device.

    python scripts/plot_bench.py [--csv benchmarks/results.csv] [--out benchmarks/speedup.png] [--commit SHA]
Takes the newest row per (device, benchmark, case, impl), or those of one commit.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ibert.scripts._bench import RESULTS_CSV  # noqa: E402

INTEGER_IMPLS = {"gemm": "int8+requant", "nonlinear": "integer", "model-forward": "ours integer engine",
                 "latency-grid": "integer engine"}


def latest(rows: list[dict], commit: str | None) -> dict:
    keep = {}
    for r in rows:
        if commit is None or r["commit"] == commit:
            keep[(r["device"], r["benchmark"], r["case"], r["impl"])] = r
    return keep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=str(RESULTS_CSV))
    p.add_argument("--out", default=str(Path(RESULTS_CSV).with_name("speedup.png")))
    p.add_argument("--commit", default=None)
    args = p.parse_args()
    with open(args.csv, newline="") as f:
        rows = latest(list(csv.DictReader(f)), args.commit)
    panels = [(dev, bench) for dev, bench in sorted({(k[0], k[1]) for k in rows}) if bench in INTEGER_IMPLS]
    if not panels:
        raise SystemExit(f"no integer-path rows in {args.csv}")
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, (dev, bench) in zip(axes[:, 0], panels):
        cases = [(k[2], float(r["speedup"])) for k, r in rows.items()
                 if k[0] == dev and k[1] == bench and k[3] == INTEGER_IMPLS[bench] and r["speedup"]]
        ax.bar(range(len(cases)), [s for _, s in cases])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(cases)), [c for c, _ in cases], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("fp32 time / integer time")
        ax.set_title(f"{bench} - {dev}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
