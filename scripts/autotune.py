"""Sweep the Triton GEMM's configurations over BERT-base/large GLUE inference shapes.

On a GPU: every configuration is checked against the torch reference (exactly) and timed; the best per
shape goes to kernels/tuned/<arch>.json, which `kernels.tuning` then loads.
Without a GPU: every configuration is checked through the interpreter on a small odd shape, and compiled
ahead of time for sm_80 and sm_90, with registers, spills and shared memory from ptxas; configurations that
spill, exceed shared memory or fail to compile are flagged.
Output: a markdown table (stdout and --out), a CSV and a heatmap PNG per architecture.

    python scripts/autotune.py [--quick] [--out benchmarks/autotune]
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
BATCHES, SEQS = (1, 8, 32), (128, 256)
BASE_NK = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]  # (N, K): fused QKV, attn-out, FFN-in, FFN-out
LARGE_NK = [(3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)]


def sweep_configs(quick: bool = False) -> list[dict]:
    """The configuration space (valid for an int8 dot on NVIDIA: BLOCK_K >= 32)."""
    space = dict(BLOCK_M=(64, 128), BLOCK_N=(64, 128, 256), BLOCK_K=(64, 128) if quick else (32, 64, 128),
                 GROUP_M=(8,), num_warps=(4, 8), num_stages=(3,) if quick else (2, 3, 4))
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*space.values())]


def shapes() -> list[tuple[int, int, int]]:
    return [(b * s, n, k) for b in BATCHES for s in SEQS for n, k in BASE_NK + LARGE_NK]


def config_name(cfg: dict) -> str:
    return f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} w{cfg['num_warps']} s{cfg['num_stages']}"


def check_config(cfg: dict, M: int = 70, N: int = 130, K: int = 100, device: str = "cpu") -> bool:
    """The requantizing GEMM under this config equals the torch reference exactly (odd sizes, residual)."""
    import torch

    import kernels

    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8).to(device)
    b = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8).to(device)
    bias = torch.randint(-5000, 5000, (N,), generator=g, dtype=torch.int32).to(device)
    m, e = kernels.dyadic(torch.rand(N, generator=g, dtype=torch.float64).to(device) * 1e-3)
    res = torch.randint(-127, 128, (M, N), generator=g, dtype=torch.int8).to(device)
    mr, er = kernels.dyadic(torch.tensor([0.5], dtype=torch.float64, device=device))
    args = (a, b, bias, m, e, 8, res, mr, er)
    ref = kernels.int8_matmul(*args, backend="torch")
    return bool(torch.equal(kernels.int8_matmul(*args, backend="triton", config=dict(cfg)), ref))


def interpreter_checks(configs: list[dict]) -> list[bool]:
    """Run `check_config` for each config in a subprocess under TRITON_INTERPRET=1."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = ("import json, sys; sys.path.insert(0, %r); from scripts.autotune import check_config; "
            "print(json.dumps([check_config(c) for c in json.loads(sys.stdin.read())]))" % str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(configs), capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def aot_reports(configs: list[dict]) -> list[dict]:
    """Compile each config for sm_80 and sm_90; registers, spills, shared memory, or the error."""
    from kernels.aot import ARCHS, compile_spec, gemm_spec, ptxas_report

    rows = []
    for cfg in configs:
        spec = gemm_spec(BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"])
        for arch in ARCHS:
            row = {"config": config_name(cfg), "arch": f"sm{arch}", **cfg}
            try:
                r = ptxas_report(compile_spec(spec, arch, cfg["num_warps"], cfg["num_stages"]), spec.name, arch)
                row.update(registers=r.registers, spill_bytes=r.spill_bytes, shared_bytes=r.shared_bytes, error="")
                flags = []
                if r.spill_bytes:
                    flags.append("spills")
                if r.shared_bytes > SHARED_LIMIT[arch]:
                    flags.append("shared memory over the limit")
                row["flag"] = ", ".join(flags)
            except Exception as exc:  # a config the compiler rejects is a result of the sweep, not a crash
                row.update(registers="", spill_bytes="", shared_bytes="", error=f"{type(exc).__name__}", flag="no compile")
            rows.append(row)
            print(f"{row['config']:<22} {row['arch']} regs={row['registers']} spill={row['spill_bytes']} "
                  f"smem={row['shared_bytes']} {row['flag']}", flush=True)
    return rows


def gpu_sweep(configs: list[dict], quick: bool) -> tuple[list[dict], dict]:
    """Time every correct config per shape on the GPU; return rows and the best config per shape."""
    import torch
    import triton

    import kernels

    rows, best = [], {}
    for M, N, K in shapes()[:8] if quick else shapes():
        a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device="cuda")
        b = torch.randint(-128, 128, (N, K), dtype=torch.int8, device="cuda")
        bias = torch.randint(-5000, 5000, (N,), dtype=torch.int32, device="cuda")
        m, e = kernels.dyadic(torch.rand(N, dtype=torch.float64, device="cuda") * 1e-4)
        ref = kernels.int8_matmul(a, b, bias, m, e, 8, backend="torch")
        timings = {}
        for cfg in configs:
            try:
                out = kernels.int8_matmul(a, b, bias, m, e, 8, backend="triton", config=dict(cfg))
            except Exception as exc:  # out of resources etc.: recorded, skipped
                rows.append({"shape": f"{M},{N},{K}", "config": config_name(cfg), "ms": "", "error": type(exc).__name__})
                continue
            if not torch.equal(out, ref):
                rows.append({"shape": f"{M},{N},{K}", "config": config_name(cfg), "ms": "", "error": "WRONG RESULT"})
                continue
            ms = triton.testing.do_bench(lambda: kernels.int8_matmul(a, b, bias, m, e, 8, backend="triton",
                                                                     config=dict(cfg)))
            timings[config_name(cfg)] = (ms, cfg)
            rows.append({"shape": f"{M},{N},{K}", "config": config_name(cfg), "ms": f"{ms:.4f}",
                         "TOPS": f"{2 * M * N * K / ms / 1e9:.1f}", "error": ""})
        name, (ms, cfg) = min(timings.items(), key=lambda kv: kv[1][0])
        best[f"{M},{N},{K}"] = cfg
        print(f"M={M} N={N} K={K}: best {name} {ms:.4f} ms ({2 * M * N * K / ms / 1e9:.1f} TOPS)", flush=True)
    return rows, best


def heatmap(rows: list[dict], value: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    configs = sorted({r["config"] for r in rows})
    archs = sorted({r["arch"] for r in rows})
    grid = np.full((len(configs), len(archs)), np.nan)
    for r in rows:
        if r[value] != "":
            grid[configs.index(r["config"]), archs.index(r["arch"])] = float(r[value])
    fig, ax = plt.subplots(figsize=(4 + len(archs), 0.22 * len(configs) + 1.5))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(configs)), configs, fontsize=6)
    ax.set_xticks(range(len(archs)), archs)
    for i, j in zip(*np.where(np.isnan(grid))):
        ax.text(j, i, "x", ha="center", va="center", color="red", fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=value)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller configuration space (and fewer GPU shapes)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "autotune"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = sweep_configs(args.quick)
    import torch

    if torch.cuda.is_available():
        from kernels.tuning import TUNED_DIR, arch_name

        rows, best = gpu_sweep(configs, args.quick)
        arch = arch_name(torch.device("cuda"))
        TUNED_DIR.mkdir(exist_ok=True)
        tuned = TUNED_DIR / f"{arch}.json"
        tmp = tuned.with_suffix(".tmp")
        tmp.write_text(json.dumps({"device": torch.cuda.get_device_name(), "gemm": best}, indent=1, sort_keys=True))
        os.replace(tmp, tuned)
        write_csv(rows, out / f"gemm_{arch}_timings.csv")
        print(f"tuned configurations for {arch}: {tuned}")
        return
    print(f"no GPU: checking {len(configs)} configurations through the interpreter, then compiling for sm80/sm90")
    ok = dict(zip(map(config_name, configs), interpreter_checks(configs)))
    rows = aot_reports(configs)
    for r in rows:
        r["interpreter_exact"] = ok[r["config"]]
    write_csv(rows, out / "gemm_aot.csv")
    heatmap(rows, "registers", out / "gemm_registers.png", "int8 GEMM + requant epilogue: registers (x: no compile)")
    heatmap(rows, "spill_bytes", out / "gemm_spills.png", "int8 GEMM + requant epilogue: spill bytes")
    lines = ["| config | arch | exact (interpreter) | registers | spill B | shared B | flag |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['arch']} | {r['interpreter_exact']} | {r['registers']} | {r['spill_bytes']} | "
              f"{r['shared_bytes']} | {r['flag']} |" for r in rows]
    (out / "gemm_aot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
