"""i-softmax (I-BERT, Algorithm 3) over the last dimension, integer in, unsigned `out_bits`-bit out.

exp(x) for x <= 0: x = -z ln2 + p, p in (-ln2, 0], exp(p) ~= 0.3585 (p + 1.353)^2 + 0.344, then a right shift
by z (the paper's form; no 60-bit intermediates). Everything is int32: scores and mask saturate at +-2**30,
differences below -2**30 are clipped (exp is 0 there at any output width; the bound is max(top, -2**30) - 2**30,
so a row masked below -2**30 everywhere cannot underflow), a fine scale is first coarsened
by a right shift to at least 2**-14 (the polynomial then stays below 2**30), and the exps are shifted to
about 15 bits before the row sum, so that the sum, the one division per row and the normalisation all stay
below 2**31. P = min(round(e * floor((2**31 - 1) / sum) / 2**(31-k)), 2**k - 1): rounded to nearest (as
`((v >> (30-k)) + 1) >> 1`, which cannot overflow), saturated only for a row that is all one key.
"""
from __future__ import annotations

import math

import torch

from kernels._cpu import resolve_cpu_backend
from kernels._triton import tl, triton
from kernels._utils import check_bits, check_same_device, check_tensor, maybe_compiled
from kernels.tuning import launch_config

EXP_COEF = (0.35815147, 0.96963238, 1.0)  # exp(p) ~= c0 p^2 + c1 p + c2 on (-ln2, 0]
EXP_BITS = 15  # exps are shifted to about this many bits before the row sum
MAX_Z = 30  # exp(x) for x < -30 ln2 is 0 at every output width
MIN_POLY_SCALE = 2.0**-14  # finer input scales are coarsened to this by a right shift
CLIP = 2**30
NUM_PARAMS = 5
MAX_SCALE = math.log(2.0) / 8


def softmax_params(scale: torch.Tensor) -> torch.Tensor:
    """Integer constants of i-softmax for a per-tensor input scale.

    scale: float tensor [] or [1], in (0, ln2 / 8]: at least 8 integer steps per ln2, so that the polynomial
    means something and every row's largest exp is positive.
    Returns int64 [5]: ln2 step x0 (< 0), polynomial b and c, exp shift, input coarsening shift r.
    """
    if not scale.is_floating_point() or scale.numel() != 1:
        raise TypeError(f"scale must be a float tensor of one element, got {scale.dtype} {tuple(scale.shape)}")
    s = scale.double().reshape(1)
    if not 0 < s.item() <= MAX_SCALE:
        raise ValueError(f"softmax input scale must be in (0, ln2/8 = {MAX_SCALE:.4f}], got {s.item():g}")
    r = torch.ceil(torch.log2(MIN_POLY_SCALE / s)).clamp(min=0)
    s = s * 2.0**r
    x0 = torch.floor(-math.log(2.0) / s)
    b = torch.floor(EXP_COEF[1] / EXP_COEF[0] / s)
    c = torch.floor(EXP_COEF[2] / EXP_COEF[0] / s**2)
    shift = (torch.frexp(c)[1].long() - EXP_BITS).clamp(min=0)
    return torch.cat([x0.long(), b.long(), c.long(), shift, r.long()])


def exp_scale(scale: torch.Tensor) -> torch.Tensor:
    """Scale of the integer exps that `int_exp_reference` returns."""
    p = softmax_params(scale)
    return EXP_COEF[0] * (scale.double().reshape(1) * 2.0 ** p[4].double()) ** 2 * 2.0 ** p[3].double()


def floor_div_small(d: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """d // x0 for int32 MAX_Z * x0 <= d <= 0 and x0 < 0, i.e. a quotient in [0, MAX_Z]: five compare-and-select
    steps of a binary search, which vectorize (x86 has no vector integer division). Equal to `d // x0`."""
    z = torch.zeros_like(d)
    for bit in (16, 8, 4, 2, 1):
        t = z + bit
        z = torch.where(d <= t * x0, t, z)
    return z


def int_exp_reference(d: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """exp of int32 integers -2**30 <= d <= 0 (of the input scale) -> int32 of scale `exp_scale`."""
    x0, b, c, shift, r = params.int()
    d = torch.maximum(d >> r, MAX_Z * x0)
    z = floor_div_small(d, x0)
    p = d - z * x0
    return ((p + b) * p + c) >> (z + shift).clamp(max=31)


def softmax_reference(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor | None, out_bits: int) -> torch.Tensor:
    y = x.clamp(-CLIP, CLIP)
    if mask is not None:
        y = y + mask.clamp(-CLIP, CLIP).reshape(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1])
    top = y.amax(dim=-1, keepdim=True)
    ex = int_exp_reference(torch.maximum(y, top.clamp(min=-CLIP) - CLIP) - top, params)
    factor = (2**31 - 1) // ex.sum(dim=-1, keepdim=True, dtype=torch.int32)
    p = (((ex * factor) >> (30 - out_bits)) + 1) >> 1
    return p.clamp(max=(1 << out_bits) - 1).to(torch.uint8 if out_bits <= 8 else torch.int32)


_softmax_torch = maybe_compiled(softmax_reference)


@triton.jit
def softmax_rows(x, mk, valid, p_ptr, OUT_BITS: tl.constexpr, MAX_Z_: tl.constexpr, CLIP_: tl.constexpr):
    """i-softmax along axis 1 of int32 scores x [R, BLOCK] plus the additive mask mk (broadcastable, or 0), each
    clipped to +-CLIP_; `valid` marks the real keys. Returns int32 probabilities 0..2**OUT_BITS - 1, 0 on
    invalid keys."""
    x = tl.minimum(tl.maximum(x, -CLIP_), CLIP_) + tl.minimum(tl.maximum(mk, -CLIP_), CLIP_)
    x = tl.where(valid, x, -(2**31))
    top = tl.max(x, axis=1)[:, None]
    x0 = tl.load(p_ptr).to(tl.int32)
    b = tl.load(p_ptr + 1).to(tl.int32)
    c = tl.load(p_ptr + 2).to(tl.int32)
    shift = tl.load(p_ptr + 3).to(tl.int32)
    r = tl.load(p_ptr + 4).to(tl.int32)
    d = (tl.maximum(x, tl.maximum(top, -CLIP_) - CLIP_) - top) >> r
    d = tl.maximum(d, MAX_Z_ * x0)
    z = d // x0  # both <= 0 and x0 < 0: truncation is the floor here
    p = d - z * x0
    ex = ((p + b) * p + c) >> tl.minimum(z + shift, 31)
    ex = tl.where(valid, ex, 0)
    factor = (2**31 - 1) // tl.sum(ex, axis=1)[:, None]
    y = tl.minimum((((ex * factor) >> (30 - OUT_BITS)) + 1) >> 1, (1 << OUT_BITS) - 1)
    return tl.where(valid, y, 0)


@triton.jit
def _softmax_kernel(
    x_ptr,  # [R, S] int32
    mask_ptr,  # [B, S] int32 additive, row r uses mask row r // rows_per_batch
    p_ptr,  # [5] int64
    y_ptr,  # [R, S] uint8 / int32
    S, rows_per_batch,
    HAS_MASK: tl.constexpr, OUT_BITS: tl.constexpr, MAX_Z_: tl.constexpr, CLIP_: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_S)[None, :]
    valid = offs < S
    x = tl.load(x_ptr + row * S + offs, mask=valid, other=0)
    mk = tl.zeros_like(x)
    if HAS_MASK:
        mk = tl.load(mask_ptr + (row // rows_per_batch) * S + offs, mask=valid, other=0)
    y = softmax_rows(x, mk, valid, p_ptr, OUT_BITS, MAX_Z_, CLIP_)
    tl.store(y_ptr + row * S + offs, y.to(y_ptr.dtype.element_ty), mask=valid)


def softmax(
    x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor | None = None, out_bits: int = 8,
    backend: str = "auto", config: dict | None = None,
) -> torch.Tensor:
    """Integer-only softmax over the last dimension.

    x: [B, ..., S] int32 scores of scale s; params: int64 [5] from `softmax_params(s)`.
    mask: optional [B, S] int32 added to the scores of every row of batch b (0 to keep, a large negative
        integer such as -2**30 to mask a key). A row whose keys are all masked by the same amount gets the
        softmax of its scores (the mask cancels), not NaN.
    Returns [B, ..., S] of scale 2**-out_bits: uint8 for out_bits <= 8 (0..255 for 8), else int32.
    All arithmetic is int32 and overflow-free for any int32 input and S < 2**16.
    config: Triton launch configuration ({num_warps}); default from `tuning.row_config`.
    """
    check_tensor("x", x, (torch.int32,))
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dimensions [B, ..., S], got shape {tuple(x.shape)}")
    check_tensor("params", params, (torch.int64,), 1)
    if params.numel() != NUM_PARAMS:
        raise ValueError(f"params must have {NUM_PARAMS} elements (from softmax_params), got {params.numel()}")
    check_bits(out_bits, 2, 16)
    S = x.shape[-1]
    if S >= 2**16:
        raise ValueError(f"softmax rows must be shorter than 65536, got {S}")
    if mask is not None:
        check_tensor("mask", mask, (torch.int32,), 2)
        if tuple(mask.shape) != (x.shape[0], S):
            raise ValueError(f"mask must be [B, S] = {(x.shape[0], S)}, got {tuple(mask.shape)}")
    check_same_device(x=x, params=params, mask=mask)
    backend = resolve_cpu_backend(backend, x)
    y = torch.empty(x.shape, dtype=torch.uint8 if out_bits <= 8 else torch.int32, device=x.device)
    if x.numel() == 0:  # no rows, or rows of no keys
        return y
    if backend != "triton":  # no C++ kernel: "cpp" runs the reference
        return _softmax_torch(x, params, mask, out_bits)
    x = x.contiguous()
    rows = x.numel() // S
    cfg = launch_config("softmax", config, S, x.device)
    _softmax_kernel[(rows,)](
        x, mask.contiguous() if mask is not None else x, params, y, S, max(rows // x.shape[0], 1),
        HAS_MASK=mask is not None, OUT_BITS=out_bits, MAX_Z_=MAX_Z, CLIP_=CLIP, BLOCK_S=triton.next_power_of_2(S),
        num_warps=cfg["num_warps"],
    )
    return y
