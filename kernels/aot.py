"""Ahead-of-time compilation of the Triton kernels for NVIDIA targets, with no GPU.

Catches what only the GPU compiler rejects (e.g. an int8 dot with BLOCK_K < 32) and reports the register,
spill and shared-memory use of each configuration (from the cubin's ptxas report).
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels._utils import qmax
from kernels.attention import _attention_kernel
from kernels.gelu import INPUT_BITS, _gelu_kernel
from kernels.gemm import _int8_gemm_kernel
from kernels.layernorm import MIN_SHIFT, NORM_BITS, VAR_BITS, _layernorm_kernel
from kernels.requant import _requantize_kernel
from kernels.softmax import CLIP, MAX_Z, _softmax_kernel
from kernels.tuning import row_config

ARCHS = (80, 90)


@dataclass(frozen=True)
class KernelSpec:
    """One specialization of a kernel: argument types and constexpr values."""

    name: str
    fn: object
    signature: dict[str, str]
    constexprs: dict[str, object]


def _gemm_signature() -> dict[str, str]:
    ptrs = {"a_ptr": "*i8", "b_ptr": "*i8", "c_ptr": "*i8", "bias_ptr": "*i32", "m_ptr": "*i32", "e_ptr": "*i32",
            "r_ptr": "*i8", "mr_ptr": "*i32", "er_ptr": "*i32", "gp_ptr": "*i64", "m2_ptr": "*i32", "e2_ptr": "*i32"}
    ints = ["M", "N", "K", "stride_ab", "stride_am", "stride_ak", "stride_bb", "stride_bn", "stride_bk",
            "stride_cb", "stride_cm", "stride_cn"]
    return {**ptrs, **{k: "i32" for k in ints}}


def gemm_spec(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, requant=True, a_unsigned=False,
              gelu=False) -> KernelSpec:
    sig = _gemm_signature()
    if a_unsigned:
        sig["a_ptr"] = "*u8"
    if not requant:
        sig["c_ptr"] = "*i32"
    residual = requant and not gelu
    flags = dict(QMAX=32767 if gelu else 127, HAS_BIAS=True, REQUANT=requant, PER_CHANNEL=requant,
                 HAS_RESIDUAL=residual, RES_PER_CHANNEL=residual, A_UNSIGNED=a_unsigned, GELU=gelu,
                 GELU_PER_CHANNEL=gelu, QMAX2=127 if gelu else 0,
                 BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GROUP_M=GROUP_M)
    name = f"int8_gemm{'_u8' if a_unsigned else ''}{'' if requant else '_acc'}{'_gelu' if gelu else ''}"
    return KernelSpec(name, _int8_gemm_kernel,
                      {**sig, **{k: "constexpr" for k in flags}}, flags)


def _constexprs(flags: dict) -> dict[str, str]:
    return {k: "constexpr" for k in flags}


def requantize_spec(BLOCK: int = 1024) -> KernelSpec:
    flags = dict(QMAX=127, PER_CHANNEL=True, HAS_RESIDUAL=True, RES_PER_CHANNEL=True, BLOCK=BLOCK)
    return KernelSpec("requantize", _requantize_kernel,
                      {"x_ptr": "*i32", "r_ptr": "*i8", "m_ptr": "*i32", "e_ptr": "*i32", "mr_ptr": "*i32",
                       "er_ptr": "*i32", "y_ptr": "*i8", "total": "i32", "N": "i32", **_constexprs(flags)}, flags)


def gelu_spec(BLOCK: int = 1024) -> KernelSpec:
    flags = dict(IN_MAX=qmax(INPUT_BITS), QMAX=127, PER_CHANNEL=True, REQUANT=True, OUT_PER_CHANNEL=True, BLOCK=BLOCK)
    return KernelSpec("gelu", _gelu_kernel,
                      {"x_ptr": "*i32", "p_ptr": "*i64", "m_ptr": "*i32", "e_ptr": "*i32", "y_ptr": "*i8",
                       "total": "i32", "N": "i32", "C": "i32", **_constexprs(flags)}, flags)


def softmax_spec(S: int = 512) -> KernelSpec:
    flags = dict(HAS_MASK=True, OUT_BITS=8, MAX_Z_=MAX_Z, CLIP_=CLIP, BLOCK_S=triton.next_power_of_2(S))
    return KernelSpec("softmax", _softmax_kernel,
                      {"x_ptr": "*i32", "mask_ptr": "*i32", "p_ptr": "*i64", "y_ptr": "*u8", "S": "i32",
                       "rows_per_batch": "i32", **_constexprs(flags)}, flags)


def layernorm_spec(N: int = 1024) -> KernelSpec:
    flags = dict(QMAX=127, VAR_BITS_=VAR_BITS, MIN_SHIFT_=MIN_SHIFT, NORM_BITS_=NORM_BITS, BLOCK_N=triton.next_power_of_2(N))
    return KernelSpec("layernorm", _layernorm_kernel,
                      {"x_ptr": "*i32", "eps_ptr": "*i64", "m_ptr": "*i32", "e_ptr": "*i32", "beta_ptr": "*i64",
                       "y_ptr": "*i8", "N": "i32", **_constexprs(flags)}, flags)


def attention_spec(S: int = 512, D: int = 64, BLOCK_M: int = 16) -> KernelSpec:
    flags = dict(QMAX=127, OUT_BITS=8, MAX_Z_=MAX_Z, CLIP_=CLIP, HAS_MASK=True, HAS_HEAD_MASK=True,
                 RETURN_PROBS=False, BLOCK_M=BLOCK_M, BLOCK_S=max(32, triton.next_power_of_2(S)),
                 BLOCK_D=max(32, triton.next_power_of_2(D)))
    return KernelSpec(f"attention_s{S}", _attention_kernel,
                      {"qkv_ptr": "*i8", "mask_ptr": "*i32", "hm_ptr": "*u8", "p_ptr": "*i64", "m_ptr": "*i32",
                       "e_ptr": "*i32", "ctx_ptr": "*i8", "probs_ptr": "*u8", "S": "i32", "H": "i32",
                       "heads": "i32", "D": "i32", **_constexprs(flags)}, flags)


def default_specs() -> list[KernelSpec]:
    """One representative specialization of every kernel."""
    return [
        gemm_spec(), gemm_spec(requant=False), gemm_spec(BLOCK_M=64, BLOCK_N=64, a_unsigned=True), gemm_spec(gelu=True),
        requantize_spec(), gelu_spec(), softmax_spec(), layernorm_spec(),
        *(attention_spec(S, BLOCK_M=row_config("attention", S, torch.device("cpu"))["BLOCK_M"]) for S in (128, 512)),
    ]


@dataclass(frozen=True)
class CompileReport:
    name: str
    arch: int
    registers: int
    spill_bytes: int
    shared_bytes: int


def compile_spec(spec: KernelSpec, arch: int, num_warps: int = 4, num_stages: int = 3):
    """Compile one specialization to PTX and cubin for sm_{arch}; pointer arguments 16-byte aligned."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("ahead-of-time compilation needs TRITON_INTERPRET unset (run `python -m kernels.aot`)")
    fn = spec.fn
    pointer_idx = [(i,) for i, t in enumerate(spec.signature.values()) if t.startswith("*")]
    src = ASTSource(fn=fn, signature=spec.signature, constexprs=spec.constexprs,
                    attrs={idx: [["tt.divisibility", 16]] for idx in pointer_idx})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def ptxas_report(compiled, name: str, arch: int) -> CompileReport:
    """Registers and spills from `ptxas -v` on the compiled PTX; shared memory from the metadata."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        out = subprocess.run([ptxas, "-v", "--regAllocOptLevel=2", f"--gpu-name=sm_{arch}a" if arch >= 90 else f"--gpu-name=sm_{arch}",
                              ptx, "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True, check=True)
    text = out.stderr + out.stdout
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return CompileReport(name, arch, regs, spills, compiled.metadata.shared)


def main() -> None:
    """`python -m kernels.aot [--json]`: compile every kernel for sm_80 and sm_90 (the GEMM with the shipped
    default configuration of each) and report ptxas figures."""
    import json
    import sys

    from kernels.tuning import default_gemm_config

    rows = []
    for spec in default_specs():
        for arch in ARCHS:
            warps, stages = 4, 3
            if spec.fn is _int8_gemm_kernel:  # the configuration that ships for this architecture
                cfg = default_gemm_config(f"sm{arch}")
                warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
                spec = dataclasses.replace(spec, constexprs={**spec.constexprs, **cfg})
            if spec.fn is _attention_kernel:
                warps = row_config("attention", spec.constexprs["BLOCK_S"], torch.device("cpu"))["num_warps"]
            try:
                rows.append({**ptxas_report(compile_spec(spec, arch, warps, stages), spec.name, arch).__dict__,
                             "error": None})
            except Exception as exc:  # reported, not raised: the table shows every failure at once
                rows.append({"name": spec.name, "arch": arch, "error": f"{type(exc).__name__}: {exc}"[:500]})
    if "--json" in sys.argv:
        print(json.dumps(rows))
        return
    print(f"{'kernel':<16}{'arch':>6}{'regs':>6}{'spill B':>9}{'smem B':>9}  error")
    for r in rows:
        print(f"{r['name']:<16}{'sm' + str(r['arch']):>6}{r.get('registers', ''):>6}{r.get('spill_bytes', ''):>9}"
              f"{r.get('shared_bytes', ''):>9}  {r['error'] or ''}")


if __name__ == "__main__":
    main()
