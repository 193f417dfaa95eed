"""i-GELU (I-BERT, Algorithm 2): GELU(x) = x (1 + erf(x / sqrt 2)) / 2 with erf as an integer polynomial.

erf(|u|) ~= 1 - |a| (min(|u|, -b) + b)^2, a = -0.2888, b = -1.769, evaluated on integers of scale s / sqrt 2.
The integer constants depend only on the input scale, so they are computed once by `gelu_params`.
"""
from __future__ import annotations

import math

import torch

from kernels._cpu import resolve_cpu_backend
from kernels._triton import tl, triton
from kernels._utils import (
    check_bits, check_multiplier, check_same_device, check_tensor, maybe_compiled, out_dtype, qmax,
)
from kernels.requant import load_multiplier, requant_epilogue, requantize_reference
from kernels.tuning import launch_config

ERF_A, ERF_B = -0.2888, -1.769
INPUT_BITS = 16  # inputs saturate to 16 bits, which keeps every product below 2**31
ERF_BITS = 14  # the erf term is shifted down to about this many bits
MIN_ERF_SCALE = 2.0**-12  # the erf polynomial runs on inputs coarsened to at least this scale
NUM_PARAMS = 5


def gelu_params(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer constants of i-GELU for an input scale.

    scale: float tensor [] or [N] (per channel), > 0.
    Returns params: int64 [5, C] (rows: clip B, constant c, erf shift k, integer one, input shift r),
    C = scale.numel(); and out_scale: float [C], the scale of `gelu`'s int32 output.
    """
    if not scale.is_floating_point() or scale.dim() > 1:
        raise TypeError(f"scale must be a float tensor of 0 or 1 dimensions, got {scale.dtype} {tuple(scale.shape)}")
    s = scale.double().reshape(-1)
    torch._assert_async(torch.isfinite(s).all() & (s > 0).all(), "gelu_params: scale must be positive and finite")
    r = torch.ceil(torch.log2(MIN_ERF_SCALE / s)).clamp(min=0)
    s2 = s * 2.0**r / math.sqrt(2.0)
    clip = torch.floor(-ERF_B / s2)
    c = torch.floor(1.0 / (-ERF_A * s2**2))
    k = (torch.frexp(c)[1].long() - ERF_BITS).clamp(min=0)
    erf_scale = -ERF_A * s2**2 * 2.0 ** k.double()
    one = torch.floor(1.0 / erf_scale)
    params = torch.stack([clip.long(), c.long(), k, one.long(), r.long()])
    return params, (s * erf_scale / 2).to(scale.dtype)


def gelu_reference(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """x: [..., N] int32 -> [..., N] int32, |y| < 2**30; all arithmetic int32."""
    clip, c, k, one, r = params.reshape(NUM_PARAMS, -1).int()
    q = x.clamp(-qmax(INPUT_BITS), qmax(INPUT_BITS))
    t = torch.minimum(q.abs() >> r, clip) - clip
    erf = (torch.sign(q) * (c - t * t)) >> k
    return q * (erf + one)


def _gelu_requant_reference(x, params, m, e, bits):
    y = gelu_reference(x, params)
    return y if m is None else requantize_reference(y, m, e, bits)


_gelu_torch = maybe_compiled(_gelu_requant_reference)


@triton.jit
def gelu_epilogue(q, clip, c, k, one, r, IN_MAX: tl.constexpr):
    """i-GELU of int32 q with int32 constants (tensors broadcastable to q); int32 out."""
    q = tl.minimum(tl.maximum(q, -IN_MAX), IN_MAX)
    t = tl.minimum(tl.abs(q) >> r, clip) - clip
    sign = tl.where(q > 0, 1, tl.where(q < 0, -1, 0))
    erf = (sign * (c - t * t)) >> k
    return q * (erf + one)


@triton.jit
def _gelu_kernel(
    x_ptr,  # [R, N] int32
    p_ptr,  # [5, C] int64, C = N (PER_CHANNEL) or 1
    m_ptr, e_ptr,  # [N] (OUT_PER_CHANNEL) or [1] int32 (REQUANT)
    y_ptr,  # [R, N] int32, or int8/int32 when REQUANT
    total, N, C,
    IN_MAX: tl.constexpr, QMAX: tl.constexpr, PER_CHANNEL: tl.constexpr, REQUANT: tl.constexpr,
    OUT_PER_CHANNEL: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    ch = offs % N if PER_CHANNEL else tl.zeros_like(offs)
    clip = tl.load(p_ptr + ch, mask=mask, other=1).to(tl.int32)
    c = tl.load(p_ptr + C + ch, mask=mask, other=0).to(tl.int32)
    k = tl.load(p_ptr + 2 * C + ch, mask=mask, other=0).to(tl.int32)
    one = tl.load(p_ptr + 3 * C + ch, mask=mask, other=0).to(tl.int32)
    r = tl.load(p_ptr + 4 * C + ch, mask=mask, other=0).to(tl.int32)
    q = tl.load(x_ptr + offs, mask=mask, other=0)
    y = gelu_epilogue(q, clip, c, k, one, r, IN_MAX)
    if REQUANT:
        m, e = load_multiplier(m_ptr, e_ptr, offs % N, mask, OUT_PER_CHANNEL)
        y = requant_epilogue(y.to(tl.int64), m, e, QMAX)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _gelu_triton(x, params, m, e, bits, config):
    requant = m is not None
    y = torch.empty(x.shape, dtype=out_dtype(bits) if requant else torch.int32, device=x.device)
    total, C = x.numel(), params.shape[1]
    grid = lambda meta: (triton.cdiv(total, meta["BLOCK"]),)
    _gelu_kernel[grid](
        x, params, m if requant else params, e if requant else params, y, total, x.shape[-1], C,
        IN_MAX=qmax(INPUT_BITS), QMAX=qmax(bits) if requant else 0, PER_CHANNEL=C > 1, REQUANT=requant,
        OUT_PER_CHANNEL=requant and m.numel() > 1, **config,
    )
    return y


def gelu(
    x: torch.Tensor, params: torch.Tensor, m: torch.Tensor | None = None, e: torch.Tensor | None = None,
    bits: int = 8, backend: str = "auto", config: dict | None = None,
) -> torch.Tensor:
    """Integer-only GELU.

    x: [..., N] int32 holding 16-bit integers (larger values saturate to +-(2**15 - 1)), scale s.
    params: int64 [5, 1] or [5, N] from `gelu_params(s)`.
    Returns [..., N] int32 with scale `out_scale` from `gelu_params`; or, with a dyadic multiplier (m, e),
    int32 [1] or [N] (per channel), that result requantized to `bits` bits (int8 for bits <= 8) in the same pass.
    config: Triton launch configuration ({BLOCK, num_warps}); default from `tuning.row_config`.
    """
    check_tensor("x", x, (torch.int32,))
    check_tensor("params", params, (torch.int64,), 2)
    n = x.shape[-1] if x.dim() else 1
    if params.shape[0] != NUM_PARAMS or params.shape[1] not in (1, n):
        raise ValueError(f"params must be [{NUM_PARAMS}, 1] or [{NUM_PARAMS}, {n}] (from gelu_params), "
                         f"got {tuple(params.shape)}")
    if (m is None) != (e is None):
        raise ValueError("requantization needs both m and e")
    if m is not None:
        check_bits(bits)
        check_multiplier(m, e, n)
    check_same_device(x=x, params=params, m=m, e=e)
    if resolve_cpu_backend(backend, x) != "triton":  # no C++ kernel: "cpp" runs the reference
        return _gelu_torch(x, params, m, e, bits)
    if not x.is_contiguous():
        raise ValueError("the Triton gelu needs a contiguous x")
    return _gelu_triton(x, params.contiguous(), m, e, bits, launch_config("gelu", config, n, x.device))
