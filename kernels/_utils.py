"""Shared plumbing for the integer ops: backend choice, argument checks, the rounding shift."""
from __future__ import annotations

import functools
import os
import warnings
from typing import Callable

import torch
from kernels._triton import AVAILABLE as TRITON_AVAILABLE
from kernels._triton import tl, triton

BACKENDS = ("auto", "triton", "torch")
_COMPILE = {"on": os.environ.get("IBERT_COMPILE", "0") == "1"}


def set_compile(enabled: bool) -> None:
    """Run the torch backend's integer code through `torch.compile` (fused loops on the CPU).

    Off by default (compiling takes 15-60 s per op); the integer engine and the benchmarks turn it on.
    Also settable with IBERT_COMPILE=1. The results are identical: integer ops have one answer.
    """
    _COMPILE["on"] = bool(enabled)
    if enabled:
        # One graph per variant (bit width, per-channel or not, with or without residual, ...).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)


def maybe_compiled(fn: Callable) -> Callable:
    """`fn`, or its `torch.compile`d twin while `set_compile(True)` is in force.

    The twin's first result is compared with `fn`'s, exactly; where they differ (inductor's AVX2 code for int64
    graphs is wrong on AVX-512 CPUs under ATEN_CPU_CAPABILITY=avx2), `fn` runs from then on, with a warning.
    Only the first call is checked: graphs recompiled later for other variants are not.
    """
    compiled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal compiled
        if not _COMPILE["on"]:
            return fn(*args, **kwargs)
        if compiled is not None:
            return compiled(*args, **kwargs)
        twin = torch.compile(fn, dynamic=True)
        got = twin(*args, **kwargs)
        with torch.no_grad():
            want = fn(*args, **kwargs)
        try:
            torch.testing.assert_close(got, want, rtol=0, atol=0)  # dtype, shape and every value exactly
        except AssertionError:
            pass
        else:
            compiled = twin
            return got
        warnings.warn(f"torch.compile of {fn.__qualname__} gave other results than eager on its first call: "
                      f"running it eagerly", RuntimeWarning, stacklevel=2)
        compiled = fn
        return fn(*args, **kwargs)

    return wrapper


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """'auto' is Triton for CUDA tensors and the torch reference otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and not TRITON_AVAILABLE:
        raise ValueError("backend='triton' needs Triton, which is not installed here: pip install triton, or use "
                         "backend='torch'")
    if backend == "auto":
        return "triton" if x.is_cuda and TRITON_AVAILABLE else "torch"
    if backend == "triton" and not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before importing kernels")
    return backend


def check_tensor(name: str, x: torch.Tensor, dtypes: tuple[torch.dtype, ...], ndim: int | tuple[int, ...] | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.dim() not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(x.shape)}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        raise ValueError("tensors on different devices: " + ", ".join(f"{k}={v.device}" for k, v in present.items()))


def check_bits(bits: int, low: int = 2, high: int = 32) -> None:
    if not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"bit width must be an int in [{low}, {high}], got {bits!r}")


def qmax(bits: int) -> int:
    """Largest value of a symmetric signed `bits`-bit integer: the range is [-qmax, qmax]."""
    return (1 << (bits - 1)) - 1


def out_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits <= 8 else torch.int32


def check_multiplier(m: torch.Tensor, e: torch.Tensor, n: int) -> None:
    """Dyadic multiplier `m * 2**-e`: int32 tensors of one element or one per output channel."""
    check_tensor("multiplier m", m, (torch.int32,), (0, 1))
    check_tensor("shift e", e, (torch.int32,), (0, 1))
    if m.shape != e.shape or m.numel() not in (1, n):
        raise ValueError(f"m and e must both have 1 or {n} elements, got {tuple(m.shape)} and {tuple(e.shape)}")


def rshift_round_reference(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """round(x / 2**e), halves rounded up, for int64 x and 0 <= e <= 62."""
    return (x + ((1 << e) >> 1)) >> e


@triton.jit
def rshift_round(x, e):
    """round(x / 2**e), halves rounded up: int64 x, int64 0 <= e <= 62."""
    return (x + ((1 << e) >> 1)) >> e


def bit_length_reference(x: torch.Tensor) -> torch.Tensor:
    """Number of bits of non-negative int64 integers (0 for 0)."""
    return sum(((x >> j) > 0).long() for j in range(63))


@triton.jit
def bit_length(x, MAX_BITS: tl.constexpr):
    """Number of bits of a non-negative integer tensor (0 for 0), for x < 2**MAX_BITS."""
    n = tl.zeros_like(x)
    for j in tl.static_range(MAX_BITS):
        n += ((x >> j) > 0).to(x.dtype)
    return n
