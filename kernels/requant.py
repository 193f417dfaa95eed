"""Dyadic requantization: `q_out = clamp(round(q_in * m / 2**e))`, with no float at run time.

`dyadic` turns float scale ratios into integer `(m, e)` once, on the tensors' device; `requantize` applies
them, optionally adding a second input with its own multiplier (the residual sums before LayerNorm).
"""
from __future__ import annotations

import torch

from kernels._cpu import resolve_cpu_backend
from kernels._triton import tl, triton
from kernels._utils import (
    check_bits,
    check_multiplier,
    check_same_device,
    check_tensor,
    maybe_compiled,
    out_dtype,
    qmax,
    rshift_round,
    rshift_round_reference,
)
from kernels.tuning import launch_config

MULTIPLIER_BITS = 30
MAX_SHIFT = 62


def dyadic(ratio: torch.Tensor, bits: int = MULTIPLIER_BITS) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer `(m, e)` with `m * 2**-e ~= ratio`, elementwise, on `ratio`'s device.

    ratio: float tensor, any shape, |ratio| < 2**bits (the sign goes into m).
    Returns m: int32, |m| < 2**bits, e: int32 in [0, 62]. The relative error is at most 2**-bits for
    |ratio| >= 2**(bits - 62); below that the shift saturates at 62 and the absolute error is below 2**-62.
    """
    check_bits(bits, 2, 31)
    if not ratio.is_floating_point():
        raise TypeError(f"ratio must be a float tensor, got {ratio.dtype}")
    r = ratio.double()
    torch._assert_async(torch.isfinite(r).all(), "dyadic: ratio must be finite (a NaN or inf scale upstream)")
    mantissa, exponent = torch.frexp(r)  # r = mantissa * 2**exponent, 0.5 <= |mantissa| < 1
    m = torch.round(mantissa * 2.0**bits).long()
    e = bits - exponent.long()
    carry = m.abs() == 1 << bits
    m = torch.where(carry, m >> 1, m)
    e = torch.where(carry, e - 1, e)
    torch._assert_async(torch.all(e >= 0), "dyadic: ratio too large for the multiplier width")
    m = torch.where(e > MAX_SHIFT, m >> (e - MAX_SHIFT).clamp(max=63), m)
    e = e.clamp(max=MAX_SHIFT)
    return m.int(), e.int()


def requantize_reference(
    x: torch.Tensor, m: torch.Tensor, e: torch.Tensor, bits: int,
    residual: torch.Tensor | None = None, m_res: torch.Tensor | None = None, e_res: torch.Tensor | None = None,
) -> torch.Tensor:
    """The spec: clamp(round(x*m/2**e) [+ round(residual*m_res/2**e_res)], -qmax, qmax)."""
    y = rshift_round_reference(x.long() * m.long(), e.long())
    if residual is not None:
        y = y + rshift_round_reference(residual.long() * m_res.long(), e_res.long())
    q = qmax(bits)
    return y.clamp(-q, q).to(out_dtype(bits))


_requantize_torch = maybe_compiled(requantize_reference)


@triton.jit
def requant_epilogue(x, m, e, QMAX: tl.constexpr):
    """clamp(round(x * m / 2**e)) for int64 x; m, e broadcastable int tensors."""
    y = rshift_round(x * m.to(tl.int64), e.to(tl.int64))
    return tl.minimum(tl.maximum(y, -QMAX), QMAX)


@triton.jit
def load_multiplier(m_ptr, e_ptr, channels, mask, PER_CHANNEL: tl.constexpr):
    """(m, e) as int64: those of `channels` (masked), or the one per-tensor pair."""
    if PER_CHANNEL:
        m = tl.load(m_ptr + channels, mask=mask, other=0)
        e = tl.load(e_ptr + channels, mask=mask, other=0)
    else:
        m = tl.load(m_ptr)
        e = tl.load(e_ptr)
    return m.to(tl.int64), e.to(tl.int64)


@triton.jit
def _requantize_kernel(
    x_ptr,  # [R, N] int32/int64
    r_ptr,  # [R, N] residual, any int (unused without HAS_RESIDUAL)
    m_ptr, e_ptr,  # [N] or [1] int32
    mr_ptr, er_ptr,  # [N] (RES_PER_CHANNEL) or [1] int32
    y_ptr,  # [R, N] int8/int32
    total, N,
    QMAX: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RES_PER_CHANNEL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(tl.int64)
    m, e = load_multiplier(m_ptr, e_ptr, offs % N, mask, PER_CHANNEL)
    y = rshift_round(x * m, e)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + offs, mask=mask, other=0).to(tl.int64)
        mr, er = load_multiplier(mr_ptr, er_ptr, offs % N, mask, RES_PER_CHANNEL)
        y += rshift_round(r * mr, er)
    y = tl.minimum(tl.maximum(y, -QMAX), QMAX)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _requantize_triton(x, m, e, bits, residual, m_res, e_res, config):
    y = torch.empty(x.shape, dtype=out_dtype(bits), device=x.device)
    total = x.numel()
    has_res = residual is not None
    grid = lambda meta: (triton.cdiv(total, meta["BLOCK"]),)
    _requantize_kernel[grid](
        x, residual if has_res else x, m, e, m_res if has_res else m, e_res if has_res else e, y,
        total, x.shape[-1] if x.dim() else 1,
        QMAX=qmax(bits), PER_CHANNEL=m.numel() > 1, HAS_RESIDUAL=has_res,
        RES_PER_CHANNEL=has_res and m_res.numel() > 1, **config,
    )
    return y


def requantize(
    x: torch.Tensor, m: torch.Tensor, e: torch.Tensor, bits: int = 8,
    residual: torch.Tensor | None = None, m_res: torch.Tensor | None = None, e_res: torch.Tensor | None = None,
    backend: str = "auto", config: dict | None = None,
) -> torch.Tensor:
    """Requantize integers to a signed `bits`-bit range with a dyadic multiplier.

    x: [..., N] int32 or int64, contiguous.
    m, e: int32, shape [] / [1] (per tensor) or [N] (per channel), from `dyadic`.
    residual: optional [..., N] integer tensor added after its own requantization by (m_res, e_res), per tensor
        or per channel:
        y = clamp(round(x*m/2**e) + round(residual*m_res/2**e_res), -(2**(bits-1)-1), 2**(bits-1)-1).
    Returns [..., N], int8 for bits <= 8, else int32. Rounding is to nearest, halves up.
    config: Triton launch configuration ({BLOCK, num_warps}); default from `tuning.row_config`.
    """
    check_tensor("x", x, (torch.int32, torch.int64))
    check_bits(bits)
    n = x.shape[-1] if x.dim() else 1
    check_multiplier(m, e, n)
    if residual is not None:
        check_tensor("residual", residual, (torch.int8, torch.int32, torch.int64))
        if residual.shape != x.shape:
            raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
        if m_res is None or e_res is None:
            raise ValueError("residual needs its multiplier m_res and shift e_res")
        check_multiplier(m_res, e_res, n)
    check_same_device(x=x, m=m, e=e, residual=residual, m_res=m_res, e_res=e_res)
    if resolve_cpu_backend(backend, x) != "triton":  # no C++ kernel: "cpp" runs the reference
        return _requantize_torch(x, m, e, bits, residual, m_res, e_res)
    if not x.is_contiguous() or (residual is not None and not residual.is_contiguous()):
        raise ValueError("the Triton requantize needs contiguous x and residual")
    return _requantize_triton(x, m, e, bits, residual, m_res, e_res, launch_config("requantize", config, n, x.device))
