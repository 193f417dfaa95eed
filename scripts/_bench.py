"""One way of measuring for every benchmark: median of repeated runs, the device named, rows appended to a
CSV with the git commit (so that runs on different machines and commits can be compared and plotted)."""
from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

from kernels._cpu import _cpu_flags, cpuinfo

RESULTS_CSV = Path(__file__).resolve().parent.parent / "benchmarks" / "results.csv"
FIELDS = ["time", "commit", "device", "benchmark", "case", "impl", "ms", "speedup", "note"]


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model, its int8 instructions and the threads torch uses."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    model = cpuinfo().get("model name") or platform.processor() or platform.machine()
    flags = _cpu_flags()
    isa = next((name for flag, name in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX-512 VNNI"),
                                        ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2 only")) if flag in flags), "")
    return f"{model} ({isa}), {torch.get_num_threads()} threads" if isa else f"{model}, {torch.get_num_threads()} threads"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _timer(device: str) -> Callable[[Callable[[], object]], float]:
    """A function that runs `fn` once and returns its wall time in milliseconds (CUDA: synchronised)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run(fn: Callable[[], object]) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - t) * 1000

    return run


def measure(fn: Callable[[], object], device: str, repeats: int = 10, warmup: int = 2, budget_s: float = 5.0) -> float:
    """Median wall time of `fn` in milliseconds (CUDA: synchronised), at most about `budget_s` of repeats."""
    timed = _timer(device)
    for _ in range(warmup):
        timed(fn)
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        times.append(timed(fn))
    return statistics.median(times)


def paired(base: Callable[[], object], new: Callable[[], object], device: str, pairs: int = 7) -> dict[str, float]:
    """`base` and `new` timed in turn `pairs` times (`interleaved`): the median of each one's times (ms), the
    median, min and max of the per-pair ratios base / new, and the number of pairs. On a machine whose speed drifts
    (a shared host), a pair sees one set of conditions, where two separately measured medians may not."""
    times = interleaved({"base": base, "new": new}, device, rounds=pairs)
    ratios = [b / n for b, n in zip(times["base"], times["new"])]
    return {"base ms": statistics.median(times["base"]), "new ms": statistics.median(times["new"]),
            "ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "pairs": pairs}


def interleaved(fns: dict[str, Callable[[], object]], device: str, rounds: int = 7,
                warm_ms: float = 50.0) -> dict[str, list[float]]:
    """Each round times one call of every function in turn, so every round sees one set of host conditions; each
    timed call follows at least `warm_ms` of untimed calls of the same function (on a 2-vCPU VM a call after an
    idle gap of 30 ms or more runs 15-100% slower, and ONNX Runtime's workers spin ~26 ms after a run).
    Returns each function's `rounds` times in milliseconds."""
    timed = _timer(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            while (time.perf_counter() - start) * 1000 < warm_ms:
                timed(fn)
            times[name].append(timed(fn))
    return times


def append_rows(rows: list[dict], path: Path = RESULTS_CSV) -> None:
    """Append result rows (keys from FIELDS) with the time and commit filled in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    commit = git_commit()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({"time": stamp, "commit": commit, **{k: r.get(k, "") for k in FIELDS[2:]}})
        f.flush()
        os.fsync(f.fileno())


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
