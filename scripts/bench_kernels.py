"""Per-op benchmark: each integer op against the float op it replaces, at BERT-base/large shapes.

CPU: "auto" (the C++ kernels where they build; gelu, softmax: the torch backend with compiled integer code) vs
fp32/bf16 and oneDNN's int8 `torch._int_mm` (attention: fp32 `scaled_dot_product_attention`); on a CPU with AMX
the GEMMs' share of the tiles' peak (a register-only tdpbssd loop on every thread). GPU: Triton vs
torch._int_mm vs fp16.
    python scripts/bench_kernels.py [--device cuda] [--quick]
Prints markdown tables and appends every figure to benchmarks/results.csv.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import kernels
from ibert.scripts._bench import append_rows, device_name, measure, print_table

GEMM_KN = [(768, 768), (768, 3072), (3072, 768), (1024, 1024), (1024, 4096), (4096, 1024)]
GEMM_M = [128, 1024, 4096]


def amx_tile_peak() -> float | None:
    """The AMX tiles' peak here (int8 ops/s of a register-only tdpbssd loop on every thread), None without AMX."""
    from kernels._cpu import cpp_extension

    module = cpp_extension()
    if module is None or "amx_int8" not in module.isas():
        return None
    module.amx_tile_loop(2_000_000)  # the tile unit wakes up
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        macs = module.amx_tile_loop(20_000_000)
        rates.append(2 * macs / (time.perf_counter() - start))
    return max(rates)


def bench_gemm(device: str, ms: list[int]) -> list[dict]:
    rows = []
    cpu = device == "cpu"
    peak = amx_tile_peak() if cpu else None
    if peak:
        print(f"AMX tile peak (register-only tdpbssd, {torch.get_num_threads()} threads): {peak / 1e12:.2f} TOPS")
    for M in ms:
        for K, N in GEMM_KN:
            a = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=device)
            b = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device)
            bias = torch.randint(-1000, 1000, (N,), dtype=torch.int32, device=device)
            m, e = kernels.dyadic(torch.rand(N, device=device, dtype=torch.float64) * 1e-4)
            x, w = torch.randn(M, K, device=device), torch.randn(N, K, device=device)
            ops = {"fp32": lambda: x @ w.T}
            if cpu:
                xb, wb = x.bfloat16(), w.bfloat16()
                ops["bf16"] = lambda: xb @ wb.T
            else:
                xh, wh = x.half(), w.half()
                ops["fp16"] = lambda: xh @ wh.T
            ops["_int_mm"] = lambda: torch._int_mm(a, b.T)
            packed = kernels.pack_weight(b)  # once, as the engine does
            ops["int8+requant"] = lambda: kernels.int8_matmul(a, packed, bias, m, e, 8)
            t = {k: measure(f, device) for k, f in ops.items()}
            flops = 2 * M * N * K
            case = f"M={M} K={K} N={N}"
            row = {"case": case, **{f"{k} ms": f"{v:.3f}" for k, v in t.items()},
                   "int8+requant TOPS": f"{flops / t['int8+requant'] / 1e9:.2f}",
                   **({"of the tile peak": f"{flops / t['int8+requant'] * 1e3 / peak:.0%}"} if peak else {}),
                   "speedup vs fp32": f"{t['fp32'] / t['int8+requant']:.2f}x"}
            rows.append(row)
            append_rows([{"device": device_name(device), "benchmark": "gemm", "case": case, "impl": k, "ms": f"{v:.4f}",
                          "speedup": f"{t['fp32'] / v:.3f}"} for k, v in t.items()])
            print(row, flush=True)
    return rows


def bench_elementwise(device: str, ms: list[int]) -> list[dict]:
    rows = []
    for M in ms:
        h = torch.randn(M, 3072, device=device)
        q16 = (h / (h.abs().max() / 32767)).round().int()
        gp, _ = kernels.gelu_params(torch.tensor(h.abs().max().item() / 32767, device=device))
        gm, ge = kernels.dyadic(torch.tensor([1e-3], device=device, dtype=torch.float64))
        cases = {
            f"gelu [{M}, 3072]": (lambda: F.gelu(h), lambda: kernels.gelu(q16, gp, gm, ge, 8)),
        }
        r = torch.randn(M, 768, device=device)
        q22 = (r / (r.abs().max() / (2**21 - 1))).round().int()
        lp = kernels.layernorm_params(torch.tensor(r.abs().max().item() / (2**21 - 1), device=device),
                                      torch.ones(768, device=device), torch.zeros(768, device=device), 1e-12,
                                      torch.tensor(0.05, device=device))
        cases[f"layernorm [{M}, 768]"] = (lambda: F.layer_norm(r, (768,)), lambda: kernels.layernorm(q22, *lp))
        B, S = max(M // 128, 1), 128
        sc = torch.randn(B, 12, S, S, device=device)
        qs = (sc / 3e-3).round().int()
        sp = kernels.softmax_params(torch.tensor(3e-3, device=device))
        cases[f"softmax [{B}, 12, {S}, {S}]"] = (lambda: torch.softmax(sc, -1), lambda: kernels.softmax(qs, sp))
        q, k, v = torch.randn(3, B, 12, S, 64, device=device).unbind(0)
        qkv = torch.randint(-127, 128, (B, S, 3 * 768), dtype=torch.int8, device=device)
        am, ae = kernels.dyadic(torch.tensor([5e-3], device=device, dtype=torch.float64))
        cases[f"attention [{B}, 12, {S}, 64]"] = (lambda: F.scaled_dot_product_attention(q, k, v),
                                                   lambda: kernels.attention(qkv, 12, sp, am, ae))
        for case, (flt, integer) in cases.items():
            tf, ti = measure(flt, device), measure(integer, device)
            rows.append({"case": case, "float ms": f"{tf:.3f}", "integer ms": f"{ti:.3f}", "speedup": f"{tf / ti:.2f}x"})
            append_rows([{"device": device_name(device), "benchmark": "nonlinear", "case": case, "impl": impl,
                          "ms": f"{t:.4f}", "speedup": f"{tf / t:.3f}"} for impl, t in (("float", tf), ("integer", ti))])
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="M = 128 and 1024 only")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        kernels.set_compile(True)  # fused integer epilogues; the first call of each op compiles (15-60 s)
    ms = GEMM_M[:2] if args.quick else GEMM_M
    print(f"device: {device_name(args.device)}; torch {torch.__version__}")
    gemm = bench_gemm(args.device, ms)
    print_table(f"int8 GEMM + fused requant vs float matmul ({device_name(args.device)})", gemm, list(gemm[0]))
    nl = bench_elementwise(args.device, ms)
    print_table(f"integer nonlinearities vs float ({device_name(args.device)})", nl, list(nl[0]))


if __name__ == "__main__":
    main()
