"""The C++ kernels for x86 CPUs with AMX-INT8, AVX-512 VNNI or AVX2 (`kernels/csrc`): fused attention, int8 linear
layers with in-register requantization (on AMX tiles where the CPU has them), i-LayerNorm, and a whole encoder layer
of them in one call. Built with `torch.utils.cpp_extension` on first use (1-4 min, then cached). The module builds on
any x86-64 CPU (only the kernels' inner loops are compiled for AMX, AVX-512 or AVX2), and its ops check their
arguments, then the CPU, before they run: where the CPU lacks the features they raise an error that says so."""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import warnings
from pathlib import Path

import torch

from kernels._utils import BACKENDS, resolve_backend

log = logging.getLogger(__name__)
CSRC = Path(__file__).parent / "csrc"
SOURCES = tuple(CSRC / name for name in ("module.cpp", "checks.cpp", "attention_cpu.cpp", "gemm_cpu.cpp",
                                             "layernorm_cpu.cpp", "layer_cpu.cpp"))
CPU_BACKENDS = (*BACKENDS, "cpp")
_CPU_FLAGS = {"avx2"}  # the least the C++ kernels need (/proc/cpuinfo names)
_INT8_DOT_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # what oneDNN's int8 GEMM (`torch._int_mm`) needs to be fast
GEMM_ROUTES = ("int8", "fp32")


def cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "flags", "vendor_id", ...); {} without it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}


def _cpu_flags() -> set[str]:
    return set(cpuinfo().get("flags", "").split())


@functools.lru_cache(maxsize=None)
def cpp_extension():
    """The compiled module where this CPU can run its kernels (AVX2 at least), else None (with one warning a
    process that names what is missing and the path taken instead)."""
    if platform.machine() != "x86_64":
        warnings.warn(f"the C++ CPU kernels need x86-64 (this is {platform.machine()}): the integer ops run the "
                      f"torch references")
        return None
    missing = sorted(_CPU_FLAGS - _cpu_flags())
    if missing:
        warnings.warn(f"the C++ CPU kernels need AVX2 at least; this CPU lacks {', '.join(missing)}: the integer ops "
                      f"run the torch references (exact, slower; int8 products on the {cpu_gemm_route()!r} route)")
        return None
    module = cpp_build()
    if module is not None:
        load_tuned_blockings(module)
    return module


def load_tuned_blockings(module) -> None:
    """Give the C++ linear kernel this CPU's tuned blockings (`tuning.cpu_tuned_linear`); one the kernel rejects
    (rows beyond its ISA's) drops that ISA's entries, with a warning."""
    from kernels.tuning import cpu_blocking_args, cpu_tuned_linear, cpu_tuned_path

    for isa, entries in cpu_tuned_linear().items():
        try:
            module.set_linear_blocking(isa, [[*size, *cpu_blocking_args(cfg)] for size, cfg in entries.items()])
        except ValueError as exc:
            warnings.warn(f"ignoring the {isa} blockings of {cpu_tuned_path()}: {exc}")


def linear_blocking(M: int, N: int, K: int) -> dict:
    """The blocking the C++ linear kernel takes here for a [M, K] x [N, K] product: {rows, tiles, order}."""
    from kernels.tuning import cpu_blocking_of

    return cpu_blocking_of(cpp_ops().linear_blocking(M, N, K))


@functools.lru_cache(maxsize=None)
def cpp_build():
    """The compiled module on any x86-64 CPU with a C++ compiler (built once, cached by torch), else None with a
    warning. Its kernels run only where `cpp_extension()` has it; elsewhere its ops check their arguments and then
    raise (what the tests of those checks use)."""
    if platform.machine() != "x86_64":
        return None
    try:
        from torch.utils.cpp_extension import load

        log.info("building (or loading the cached build of) the C++ CPU kernels: ~1 min the first time")
        # torch rebuilds when the sources or flags change, not the headers: their digest goes into the flags
        headers = hashlib.sha1(b"".join(h.read_bytes() for h in sorted(CSRC.glob("*.h")))).hexdigest()[:16]
        return load(name="ibert_cpu", sources=[str(s) for s in SOURCES], verbose=False,
                    extra_cflags=["-O3", "-fwrapv", "-fopenmp", f"-DIBERT_HEADERS={headers}"],
                    extra_ldflags=["-fopenmp"])
    except Exception as exc:  # no compiler, no headers: the references still run
        warnings.warn(f"the C++ CPU kernels could not be built, using the torch references: {exc}")
        return None


def cpp_ops():
    """`cpp_build()` for the registered ops (torch.ops.ibert.*), which check their arguments and the CPU
    themselves; a RuntimeError where there is no build."""
    module = cpp_build()
    if module is None:
        raise RuntimeError(f"the C++ CPU kernels need an x86-64 CPU (this is {platform.machine()}) and a C++ "
                           f"compiler: use backend='torch'")
    return module


@functools.lru_cache(maxsize=None)
def cpu_gemm_route() -> str:
    """How the torch path multiplies int8 matrices on this CPU: "int8" (`torch._int_mm`) where the CPU has an
    int8 dot-product instruction (VNNI, AMX) or is not x86, else "fp32": exact float32 GEMMs over chunks of K
    (`gemm._int_mm_fp32`), since without one oneDNN's int8 GEMM is ~30x slower than its float32 GEMM (AVX2 only:
    1024 x 384 x 1536 in 489 ms against 15). The environment variable IBERT_CPU_GEMM=int8|fp32 forces a route."""
    forced = os.environ.get("IBERT_CPU_GEMM")
    if forced:
        if forced not in GEMM_ROUTES:
            raise ValueError(f"IBERT_CPU_GEMM must be one of {GEMM_ROUTES}, got {forced!r}")
        return forced
    if platform.machine() != "x86_64" or _cpu_flags() & _INT8_DOT_FLAGS:
        return "int8"
    return "fp32"


def cpp_isa() -> str:
    """The instruction set the C++ kernels run on here: "amx_int8" (the linear layers on AMX tiles, the rest on
    AVX-512 VNNI), "avx512_vnni", "avx2" or "none" (no build, or not x86). The environment variable
    IBERT_CPU_ISA=amx_int8|avx512_vnni|avx2|none forces one the CPU has, for A/B runs."""
    module = cpp_extension()
    return module.isa() if module is not None else "none"


def cpu_isa() -> str:
    """What the integer ops run on this CPU: "cpp-amx_int8", "cpp-avx512_vnni" or "cpp-avx2" (the C++ kernels, for
    the ops that have one; the rest as below), "torch-int8" (the torch references on `torch._int_mm`) or
    "torch-fp32" (the torch references on exact float32 GEMMs)."""
    isa = cpp_isa()
    return f"cpp-{isa}" if isa != "none" else f"torch-{cpu_gemm_route()}"


@torch.compiler.assume_constant_result
def cpp_available() -> bool:
    """Whether the C++ kernels run here (a constant to torch.compile: it does not trace the build)."""
    return cpp_isa() != "none"


def resolve_cpu_backend(backend: str, x: torch.Tensor) -> str:
    """For ops with a C++ kernel: 'auto' is Triton on CUDA, "cpp" on CPUs where it runs, else "torch"."""
    if backend not in CPU_BACKENDS:
        raise ValueError(f"backend must be one of {CPU_BACKENDS}, got {backend!r}")
    if backend == "cpp":
        if x.is_cuda or not cpp_available():
            raise ValueError("backend='cpp' needs CPU tensors and an x86 CPU with AVX2 and a C++ compiler")
        return backend
    if backend == "auto" and not x.is_cuda and cpp_available():
        return "cpp"
    return resolve_backend(backend, x)
