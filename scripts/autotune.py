"""Sweep the Triton kernels' configurations over BERT-base/large GLUE inference shapes.

Kernels: the int8 GEMM (tiles, warps, stages), softmax and layernorm (warps per row), gelu and requantize
(block size, warps), the fused attention (queries per program, warps). On a GPU: every configuration is
checked against the torch reference (exactly) and timed; the best per shape goes to kernels/tuned/<arch>.json,
which `kernels.tuning` then loads.
Without a GPU: every configuration is checked through the interpreter on a small odd shape, and compiled
ahead of time for sm_80 and sm_90, with registers, spills and shared memory from ptxas; configurations that
spill, exceed shared memory or fail to compile are flagged.
Output per kernel: a markdown table, a CSV and heatmap PNGs (registers, spills) under --out.

The C++ CPU linear kernel (`cpu_linear`, on any machine): its blocking (rows per micro-tile, micro-tiles per block,
the order the threads take the work in) on each instruction set this CPU has, over the MiniLM and BERT-base linear
layers at 1 x 128 and 8 x 128 tokens. Every blocking is checked against the torch reference (exactly), then timed
in interleaved rounds; the best per shape goes to kernels/tuned/cpu-<vendor>-<family>-<model>.json, which
`kernels._cpu` loads. Time it on an otherwise idle machine.

    python scripts/autotune.py [--kernels gemm softmax layernorm gelu requantize attention cpu_linear] [--quick]
                               [--out DIR]
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

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
BATCHES, SEQS = (1, 8, 32), (128, 256)
ROW_SIZES = {"softmax": (128, 256), "layernorm": (768, 1024), "gelu": (3072, 4096), "requantize": (768, 3072),
             "attention": (128, 256, 512)}
KERNELS = ("gemm", *ROW_SIZES)
BASE_NK = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]  # (N, K): fused QKV, attn-out, FFN-in, FFN-out
LARGE_NK = [(3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)]
CPU_KERNELS = ("cpu_linear",)
CPU_NK = [(1152, 384), (384, 384), (1536, 384), (384, 1536), *BASE_NK]  # MiniLM's four linear layers, base's
CPU_TOKENS = (128, 1024)  # 1 x 128 and 8 x 128


def sweep_configs(quick: bool = False) -> list[dict]:
    """The configuration space (valid for an int8 dot on NVIDIA: BLOCK_K >= 32)."""
    space = dict(BLOCK_M=(64, 128), BLOCK_N=(64, 128, 256), BLOCK_K=(64, 128) if quick else (32, 64, 128),
                 GROUP_M=(8,), num_warps=(4, 8), num_stages=(3,) if quick else (2, 3, 4))
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*space.values())]


def shapes() -> list[tuple[int, int, int]]:
    return [(b * s, n, k) for b in BATCHES for s in SEQS for n, k in BASE_NK + LARGE_NK]


def row_sweep_configs(kernel: str, quick: bool = False) -> list[dict]:
    """A row kernel's space: warps per program, and the block size of the elementwise kernels."""
    from kernels.tuning import ROW_KERNEL_KEYS

    warps = (2, 4, 8) if quick else (1, 2, 4, 8, 16)
    if "BLOCK" in ROW_KERNEL_KEYS[kernel]:
        blocks = (512, 1024, 2048) if quick else (256, 512, 1024, 2048, 4096)
        return [dict(BLOCK=b, num_warps=w) for b in blocks for w in warps]
    if kernel == "attention":
        return [dict(BLOCK_M=b, num_warps=w) for b in ((16, 32) if quick else (16, 32, 64)) for w in (4, 8, 16)]
    return [dict(num_warps=w) for w in warps]


def kernel_configs(kernel: str, quick: bool = False) -> list[dict]:
    return sweep_configs(quick) if kernel == "gemm" else row_sweep_configs(kernel, quick)


def config_name(cfg: dict) -> str:
    if "BLOCK_N" in cfg:
        return f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} w{cfg['num_warps']} s{cfg['num_stages']}"
    if "BLOCK_M" in cfg:
        return f"M{cfg['BLOCK_M']} w{cfg['num_warps']}"
    return f"{'B%d ' % cfg['BLOCK'] if 'BLOCK' in cfg else ''}w{cfg['num_warps']}"


def row_case(kernel: str, lead: tuple[int, ...], n: int, device: str):
    """Inputs for a row kernel on [*lead, n] ([*lead, n, n] scores for softmax, lead = (batch, heads); for
    attention, lead = (batch,) and n keys, 12 heads of 64); returns run(backend, config) -> output."""
    import torch

    import kernels

    g = torch.Generator().manual_seed(0)

    def ints(lo: int, hi: int, shape: tuple[int, ...], dtype=torch.int32):
        return torch.randint(lo, hi, shape, generator=g, dtype=dtype).to(device)

    if kernel == "softmax":
        x = ints(-20000, 20000, (*lead, n, n))
        mask = torch.where(ints(0, 8, (lead[0], n)) == 0, -(2**30), 0).int()
        params = kernels.softmax_params(torch.tensor(5e-4)).to(device)
        return lambda backend, config: kernels.softmax(x, params, mask, 8, backend=backend, config=config)
    if kernel == "attention":
        qkv = ints(-127, 128, (*lead, n, 3 * 768), torch.int8)
        mask = torch.where(ints(0, 8, (lead[0], n)) == 0, -(2**30), 0).int()
        params = kernels.softmax_params(torch.tensor(4e-3)).to(device)
        m, e = (t.to(device) for t in kernels.dyadic(torch.tensor([5e-3], dtype=torch.float64)))
        return lambda backend, config: kernels.attention(qkv, 12, params, m, e, mask, backend=backend,
                                                         config=config)[0]
    if kernel == "layernorm":
        x = ints(-(2**21), 2**21, (*lead, n))
        gamma, beta = (torch.rand(n, generator=g) + 0.5).to(device), (torch.rand(n, generator=g) - 0.5).to(device)
        params = kernels.layernorm_params(torch.tensor([1e-4], device=device), gamma, beta, 1e-12,
                                          torch.tensor([0.03], device=device), 8)
        return lambda backend, config: kernels.layernorm(x, *params, 8, backend=backend, config=config)
    if kernel == "gelu":
        x = ints(-(2**15), 2**15, (*lead, n))
        params, s_out = kernels.gelu_params(torch.tensor(1e-3))
        m, e = kernels.dyadic(s_out.double() / 0.02)
        params, m, e = params.to(device), m.to(device), e.to(device)
        return lambda backend, config: kernels.gelu(x, params, m, e, 8, backend=backend, config=config)
    x = ints(-(2**24), 2**24, (*lead, n))
    m, e = kernels.dyadic(torch.rand(n, generator=g, dtype=torch.float64) * 1e-5)
    res = ints(-127, 128, (*lead, n), torch.int8)
    mr, er = kernels.dyadic(torch.tensor([0.5], dtype=torch.float64))
    m, e, mr, er = m.to(device), e.to(device), mr.to(device), er.to(device)
    return lambda backend, config: kernels.requantize(x, m, e, 8, res, mr, er, backend=backend, config=config)


def check_config(cfg: dict, kernel: str = "gemm", device: str = "cpu") -> bool:
    """The kernel under this config equals the torch reference exactly, on small odd sizes."""
    import torch

    import kernels

    if kernel != "gemm":
        lead, n = {"softmax": ((2, 3), 37), "attention": ((2,), 37)}.get(kernel, ((5,), 300))
        run = row_case(kernel, lead, n, device)
        return bool(torch.equal(run("triton", dict(cfg)), run("torch", None)))
    M, N, K = 70, 130, 100

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


def interpreter_checks(configs: list[dict], kernel: str = "gemm") -> list[bool]:
    """Run `check_config` for each config in a subprocess under TRITON_INTERPRET=1."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = ("import json, sys; from ibert.scripts.autotune import check_config; "
            "print(json.dumps([check_config(c, %r) for c in json.loads(sys.stdin.read())]))" % kernel)
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(configs), capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def aot_reports(configs: list[dict], kernel: str = "gemm") -> list[dict]:
    """Compile each config for sm_80 and sm_90 (softmax and layernorm: for each row length, which sets their
    block); registers, spills, shared memory, or the error. `target` names the heatmap column."""
    from kernels import aot

    rows = []
    for cfg in configs:
        if kernel == "gemm":
            cases = [("", aot.gemm_spec(**{k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}))]
        elif kernel in ("softmax", "layernorm"):
            cases = [(f" n={n}", getattr(aot, f"{kernel}_spec")(n)) for n in ROW_SIZES[kernel]]
        elif kernel == "attention":
            cases = [(f" S={n}", aot.attention_spec(n, BLOCK_M=cfg["BLOCK_M"])) for n in ROW_SIZES[kernel]]
        else:
            cases = [("", getattr(aot, f"{kernel}_spec")(cfg["BLOCK"]))]
        for size, spec in cases:
            for arch in aot.ARCHS:
                row = {"kernel": kernel, "config": config_name(cfg), "arch": f"sm{arch}", "target": f"sm{arch}{size}",
                       **cfg}
                try:
                    r = aot.ptxas_report(aot.compile_spec(spec, arch, cfg["num_warps"], cfg.get("num_stages", 3)),
                                         spec.name, arch)
                    row.update(registers=r.registers, spill_bytes=r.spill_bytes, shared_bytes=r.shared_bytes, error="")
                    flags = []
                    if r.spill_bytes:
                        flags.append("spills")
                    if r.shared_bytes > SHARED_LIMIT[arch]:
                        flags.append("shared memory over the limit")
                    row["flag"] = ", ".join(flags)
                except Exception as exc:  # a config the compiler rejects is a result of the sweep, not a crash
                    row.update(registers="", spill_bytes="", shared_bytes="", error=type(exc).__name__,
                               flag="no compile")
                rows.append(row)
                print(f"{kernel:<10} {row['config']:<22} {row['target']:<12} regs={row['registers']} "
                      f"spill={row['spill_bytes']} smem={row['shared_bytes']} {row['flag']}", flush=True)
    return rows


def gpu_sweep(configs: list[dict], quick: bool, device: str = "cuda", bench=None) -> tuple[list[dict], dict]:
    """Time every correct config per shape (bench: ms of a callable, default `triton.testing.do_bench`);
    return rows and the best config per shape."""
    import torch
    import triton

    import kernels

    bench = bench or triton.testing.do_bench

    rows, best = [], {}
    for M, N, K in shapes()[:8] if quick else shapes():
        a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device=device)
        b = torch.randint(-128, 128, (N, K), dtype=torch.int8, device=device)
        bias = torch.randint(-5000, 5000, (N,), dtype=torch.int32, device=device)
        m, e = kernels.dyadic(torch.rand(N, dtype=torch.float64, device=device) * 1e-4)
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
            ms = bench(lambda: kernels.int8_matmul(a, b, bias, m, e, 8, backend="triton", config=dict(cfg)))
            timings[config_name(cfg)] = (ms, cfg)
            rows.append({"shape": f"{M},{N},{K}", "config": config_name(cfg), "ms": f"{ms:.4f}",
                         "TOPS": f"{2 * M * N * K / ms / 1e9:.1f}", "error": ""})
        name, (ms, cfg) = min(timings.items(), key=lambda kv: kv[1][0])
        best[f"{M},{N},{K}"] = cfg
        print(f"M={M} N={N} K={K}: best {name} {ms:.4f} ms ({2 * M * N * K / ms / 1e9:.1f} TOPS)", flush=True)
    return rows, best


def gpu_row_sweep(kernel: str, configs: list[dict], device: str = "cuda", bench=None) -> tuple[list[dict], dict]:
    """Time every correct config of a row kernel over the GLUE shapes of each row length; the best (least
    total time over the shapes) per row length."""
    import torch
    import triton

    bench = bench or triton.testing.do_bench

    rows, best = [], {}
    for n in ROW_SIZES[kernel]:
        leads = {"softmax": [(b, 12) for b in BATCHES], "attention": [(b,) for b in BATCHES]}.get(
            kernel, [(b * s,) for b in BATCHES for s in SEQS])
        total = {config_name(c): 0.0 for c in configs}
        for lead in leads:
            run = row_case(kernel, lead, n, device)
            ref = run("torch", None)
            for cfg in configs:
                name, shape = config_name(cfg), "x".join(map(str, (*lead, n)))
                try:
                    ok = torch.equal(run("triton", dict(cfg)), ref)
                    error = "" if ok else "WRONG RESULT"
                except Exception as exc:  # out of resources etc.: recorded, skipped
                    error = type(exc).__name__
                if error:
                    total[name] = float("inf")
                    rows.append({"kernel": kernel, "shape": shape, "config": name, "ms": "", "error": error})
                    continue
                ms = bench(lambda: run("triton", dict(cfg)))
                total[name] += ms
                rows.append({"kernel": kernel, "shape": shape, "config": name, "ms": f"{ms:.4f}", "error": ""})
        name = min(total, key=total.get)
        best[str(n)] = next(c for c in configs if config_name(c) == name)
        print(f"{kernel} n={n}: best {name}, {total[name]:.4f} ms over {len(leads)} shapes", flush=True)
    return rows, best


def cpu_blocking_space(isa: str, quick: bool = False) -> list[dict]:
    """The C++ linear kernel's blockings on `isa`."""
    from kernels.tuning import CPU_ROWS

    rows = CPU_ROWS[isa][-3:] if quick else CPU_ROWS[isa]
    tiles = (4, 16, 64) if quick else (2, 4, 8, 16, 32, 64)
    return [dict(rows=r, tiles=t, order=o) for r in rows for t in tiles for o in ("blocks", "panels")]


def cpu_blocking_name(cfg: dict) -> str:
    return f"r{cfg['rows']} t{cfg['tiles']} {cfg['order']}"


def cpu_linear_sweep(isa: str, configs: list[dict], sizes: list[tuple[int, int, int]], timer=None,
                     rounds: int = 5) -> tuple[list[dict], dict]:
    """Check every blocking exactly, then time the exact ones in `rounds` interleaved rounds (timer: {name: fn} ->
    {name: [ms]}, default `_bench.interleaved`), per [M, K] x [N, K] size on `isa` (IBERT_CPU_ISA is set for
    the sweep). Returns rows and {"M,N,K": best blocking}."""
    import statistics

    import torch

    import kernels
    from kernels.tuning import CPU_DEFAULT_BLOCKING

    if timer is None:
        from ibert.scripts._bench import interleaved

        timer = lambda fns: interleaved(fns, "cpu", rounds=rounds, warm_ms=20.0)
    previous = os.environ.get("IBERT_CPU_ISA")
    os.environ["IBERT_CPU_ISA"] = isa
    rows, best = [], {}
    try:
        for M, N, K in sizes:
            g = torch.Generator().manual_seed(M + N + K)
            a = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)  # requantized activations
            b = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
            bias = torch.randint(-5000, 5000, (N,), generator=g, dtype=torch.int32)
            m, e = kernels.dyadic(torch.rand(N, generator=g, dtype=torch.float64) * 1e-3)
            packed = kernels.pack_weight(b)
            ref = kernels.int8_matmul(a, b, bias, m, e, 8, backend="torch")
            run = lambda cfg: kernels.int8_matmul(a, packed, bias, m, e, 8, backend="cpp", config=cfg)
            shape, exact = f"{M},{N},{K}", {}
            for cfg in configs:
                if torch.equal(run(cfg), ref):
                    exact[cpu_blocking_name(cfg)] = cfg
                else:
                    rows.append({"isa": isa, "shape": shape, "config": cpu_blocking_name(cfg), "ms": "",
                                 "error": "WRONG RESULT"})
            if not exact:
                continue
            times = timer({name: (lambda cfg=cfg: run(cfg)) for name, cfg in exact.items()})
            ms = {name: statistics.median(t) for name, t in times.items()}
            fastest = min(ms, key=ms.get)
            for name, t in ms.items():
                rows.append({"isa": isa, "shape": shape, "target": f"{M}x{N}x{K}", "config": name, "ms": f"{t:.4f}",
                             "GMACs": f"{M * N * K / t / 1e6:.1f}", "vs_best": f"{t / ms[fastest]:.3f}", "error": ""})
            best[shape] = exact[fastest]
            print(f"{isa} M={M} N={N} K={K}: best {fastest} {ms[fastest]:.3f} ms ({M * N * K / ms[fastest] / 1e6:.1f} G "
                  f"MAC/s); default {ms.get(cpu_blocking_name(CPU_DEFAULT_BLOCKING[isa]), float('nan')):.3f} ms",
                  flush=True)
    finally:
        if previous is None:
            os.environ.pop("IBERT_CPU_ISA", None)
        else:
            os.environ["IBERT_CPU_ISA"] = previous
    return rows, best


def cpu_tune(quick: bool, out: Path) -> None:
    """The C++ linear sweep on every ISA this CPU has: CSV, heatmap (time / the shape's best), tuned file."""
    from kernels._cpu import cpp_extension, load_tuned_blockings
    from kernels.tuning import cpu_id, cpu_name, cpu_tuned_path

    module = cpp_extension()
    if module is None:
        raise SystemExit("cpu_linear: the C++ kernels do not run on this CPU (AVX2 at least)")
    isas = [isa for isa in module.isas() if isa != "none"]
    sizes = [(M, N, K) for M in CPU_TOKENS for N, K in (CPU_NK[:4] if quick else CPU_NK)]
    best, rows = {}, []
    for isa in isas:
        isa_rows, best[isa] = cpu_linear_sweep(isa, cpu_blocking_space(isa, quick), sizes)
        rows += isa_rows
        heatmap([r for r in isa_rows if not r["error"]], "vs_best", out / f"cpu_linear_{cpu_id()}_{isa}.png",
                f"C++ linear on {isa}, {cpu_name()}: time / the shape's best")
    write_csv(rows, out / f"cpu_linear_{cpu_id()}.csv")
    path = cpu_tuned_path()
    save_cpu_tuned(best, path, cpu_name())
    load_tuned_blockings(module)
    print(f"tuned blockings for {cpu_name()}: {path}")


def save_cpu_tuned(best: dict[str, dict[str, dict]], path: Path, cpu: str) -> None:
    """Merge {isa: {"M,N,K": blocking}} into the CPU tuned file at `path` (atomically), after checking that
    `kernels.tuning` reads it back."""
    from ibert.atomic import write_file
    from kernels.tuning import parse_cpu_tuned

    tuned = json.loads(path.read_text()) if path.is_file() else {}
    tuned["cpu"] = cpu
    for isa, entries in best.items():
        tuned.setdefault("linear", {}).setdefault(isa, {}).update(entries)
    text = json.dumps(tuned, indent=1, sort_keys=True)
    parse_cpu_tuned(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, lambda tmp: Path(tmp).write_text(text))


def cpu_report(kernel: str, configs: list[dict], out: Path) -> None:
    """Interpreter check and sm_80/sm_90 compile of every config: CSV, markdown table, heatmaps."""
    print(f"{kernel}: checking {len(configs)} configurations through the interpreter, then compiling for sm80/sm90")
    ok = dict(zip(map(config_name, configs), interpreter_checks(configs, kernel)))
    rows = aot_reports(configs, kernel)
    for r in rows:
        r["interpreter_exact"] = ok[r["config"]]
    write_csv(rows, out / f"{kernel}_aot.csv")
    what = "int8 GEMM + requant epilogue" if kernel == "gemm" else kernel
    heatmap(rows, "registers", out / f"{kernel}_registers.png", f"{what}: registers (x: no compile)")
    heatmap(rows, "spill_bytes", out / f"{kernel}_spills.png", f"{what}: spill bytes")
    lines = ["| config | target | exact (interpreter) | registers | spill B | shared B | flag |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['target']} | {r['interpreter_exact']} | {r['registers']} | {r['spill_bytes']} | "
              f"{r['shared_bytes']} | {r['flag']} |" for r in rows]
    (out / f"{kernel}_aot.md").write_text(f"# {what}: sweep without a GPU\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


def heatmap(rows: list[dict], value: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    configs = sorted({r["config"] for r in rows})
    targets = sorted({r["target"] for r in rows})
    grid = np.full((len(configs), len(targets)), np.nan)
    for r in rows:
        if r[value] != "":
            grid[configs.index(r["config"]), targets.index(r["target"])] = float(r[value])
    fig, ax = plt.subplots(figsize=(4 + len(targets), 0.22 * len(configs) + 1.5))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(configs)), configs, fontsize=6)
    ax.set_xticks(range(len(targets)), targets, rotation=30, fontsize=7)
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


def save_tuned(best: dict[str, dict], path: Path, device_name: str) -> None:
    """Merge the best configs per kernel into the tuned-config file at `path` (atomically), after checking
    that `kernels.tuning` reads them back."""
    from kernels.tuning import parse_tuned

    tuned = json.loads(path.read_text()) if path.is_file() else {}
    tuned.update(best, device=device_name)
    text = json.dumps(tuned, indent=1, sort_keys=True)
    parse_tuned(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", nargs="+", choices=KERNELS + CPU_KERNELS, default=list(KERNELS))
    p.add_argument("--quick", action="store_true", help="smaller configuration spaces (and fewer GEMM shapes on a GPU)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "autotune"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    if "cpu_linear" in args.kernels:
        cpu_tune(args.quick, out)
        args.kernels = [k for k in args.kernels if k != "cpu_linear"]
    if not args.kernels:
        return
    if not torch.cuda.is_available():
        for kernel in args.kernels:
            cpu_report(kernel, kernel_configs(kernel, args.quick), out)
        return
    from kernels.tuning import TUNED_DIR, arch_name

    arch = arch_name(torch.device("cuda"))
    best = {}
    for kernel in args.kernels:
        configs = kernel_configs(kernel, args.quick)
        rows, best[kernel] = gpu_sweep(configs, args.quick) if kernel == "gemm" else gpu_row_sweep(kernel, configs)
        write_csv(rows, out / f"{kernel}_{arch}_timings.csv")
    save_tuned(best, TUNED_DIR / f"{arch}.json", torch.cuda.get_device_name())
    print(f"tuned configurations for {arch}: {TUNED_DIR / f'{arch}.json'}")


if __name__ == "__main__":
    main()
