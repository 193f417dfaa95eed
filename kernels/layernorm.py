"""Integer-only LayerNorm (I-BERT, section 3.5): integer mean and variance, Newton integer square root,
one integer division per row, gamma and beta applied in the output requantization.

Per row: y = N x - sum(x) (that is N (x - mean), exact: no rounded mean); a signed shift sh = max(bitlen(max|y|) - 15, -14) brings |y| to 15 bits for the
variance (exact in int64, and precise for small rows too); std = isqrt(var + eps) (at least 1, so a constant
row gives beta, not NaN); the normalised value y * floor(2**30 / std) >> (sh + 14) has scale 2**-16;
then out = round((norm * m_c + beta_c) / 2**e_c): gamma and beta in one rounding (beta_c = beta / s_out * 2**e_c).
"""
from __future__ import annotations

import torch

from kernels._cpu import cpp_ops, resolve_cpu_backend
from kernels._triton import tl, triton
from kernels._utils import (
    bit_length,
    bit_length_reference,
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
from kernels.requant import dyadic
from kernels.tuning import launch_config

NORM_BITS = 16  # the normalised value has scale 2**-NORM_BITS
VAR_BITS = 15  # |y| is shifted to VAR_BITS bits for the sum of squares
MIN_SHIFT = NORM_BITS - 30  # keeps the final shift sh + 30 - NORM_BITS >= 0
NEWTON_STEPS = 6  # from a start within 2x of the root, exact for inputs below 2**62
MAX_OUT_SHIFT = 53  # keeps |norm * m| + |beta_c| below 2**63


def max_input(n: int) -> int:
    """The bound on |x| within which i-LayerNorm of rows of n is exact in int64: 2**b, b <= 31 the largest with
    2**(b + 17) n**1.5 < 2**62 (a bit of margin below 2**63). The worst row is one outlier: |y| < 2 n 2**b, its
    15-bit shift keeps max|ys| >= 2**14, so std >= 2**14 / sqrt(n) and y * floor(2**30 / std) < 2**(b + 17) n**1.5.
    That is 2**30 for n = 768, 2**26 for n = 4096, 2**21 for n = 65535: the engine's 22-bit inputs fit them all."""
    b = 31
    while (2 ** (b + 17)) ** 2 * n**3 >= 2**124:
        b -= 1
    return 2**b


def layernorm_params(
    in_scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, out_scale: torch.Tensor,
    bits: int = 8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer constants of i-LayerNorm.

    in_scale: float, one element; out_scale: float, one element or [N] (a scale per channel); weight (gamma),
    bias (beta): float [N]; eps as in nn.LayerNorm.
    Returns eps_int: int64 [1] (eps in units of (in_scale / N)**2, N = weight.numel()), m, e: int32 [N]
    (gamma / (2**16 out_scale) = m * 2**-e, e <= 53), beta_int: int64 [N] (beta / out_scale * 2**e, with
    beta / out_scale saturated to +-2**bits, beyond which the output saturates anyway).
    """
    n = weight.numel()
    s_in, s_out = in_scale.double().reshape(1), out_scale.double().reshape(-1)
    eps_int = torch.floor(eps * n**2 / s_in**2).clamp(max=2.0**62).long()
    m, e = dyadic(weight.double() / (2.0**NORM_BITS * s_out))
    excess = (e.long() - MAX_OUT_SHIFT).clamp(min=0)
    m, e = (m.long() >> excess).int(), (e.long() - excess).int()
    beta = (bias.double() / s_out).clamp(-(2.0**bits), 2.0**bits)
    beta_int = torch.round(beta * 2.0 ** e.double()).long()
    return eps_int, m, e, beta_int


def isqrt_reference(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) of int64 0 <= n < 2**62 by Newton's method from a power of two above the root."""
    n = n.clamp(min=1)
    x = torch.ones_like(n) << ((bit_length_reference(n) + 1) >> 1)
    for _ in range(NEWTON_STEPS):
        x = torch.minimum(x, (x + n // x) >> 1)
    return x


def layernorm_reference(x, eps_int, m, e, beta_int, bits):
    n = x.shape[-1]
    x = x.long()
    y = x * n - x.sum(-1, keepdim=True)
    sh = (bit_length_reference(y.abs().amax(-1, keepdim=True)) - VAR_BITS).clamp(min=MIN_SHIFT)
    ys = torch.where(sh >= 0, y >> sh.clamp(min=0), y << (-sh).clamp(min=0))
    var = (ys * ys).sum(-1, keepdim=True) // n
    up = (-2 * sh).clamp(min=0)
    eps_row = torch.where(sh >= 0, eps_int >> (2 * sh).clamp(min=0, max=62), torch.minimum(eps_int, 2**61 >> up) << up)
    std = isqrt_reference(var + eps_row)
    norm = (y * ((1 << 30) // std)) >> (sh + 30 - NORM_BITS)
    q = qmax(bits)
    out = rshift_round_reference(norm * m.long() + beta_int, e.long())
    return out.clamp(-q, q).to(out_dtype(bits))


_layernorm_torch = maybe_compiled(layernorm_reference)


@triton.jit
def _isqrt(n):
    """floor(sqrt(n)) for int64 1 <= n < 2**62."""
    x = (tl.zeros_like(n) + 1) << ((bit_length(n, 62) + 1) >> 1)
    for _ in tl.static_range(6):
        x = tl.minimum(x, (x + n // x) >> 1)
    return x


@triton.jit
def _layernorm_kernel(
    x_ptr,  # [R, N] int32
    eps_ptr,  # [1] int64
    m_ptr, e_ptr,  # [N] int32
    beta_ptr,  # [N] int64
    y_ptr,  # [R, N] int8 / int32
    N,
    QMAX: tl.constexpr, VAR_BITS_: tl.constexpr, MIN_SHIFT_: tl.constexpr, NORM_BITS_: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    valid = offs < N
    x = tl.load(x_ptr + row * N + offs, mask=valid, other=0).to(tl.int64)
    y = tl.where(valid, x * N - tl.sum(x, axis=0), 0)
    sh = tl.maximum(bit_length(tl.max(tl.abs(y), axis=0), 50) - VAR_BITS_, MIN_SHIFT_)
    down = tl.maximum(sh, 0)
    up = tl.maximum(-sh, 0)
    ys = (y >> down) << up
    var = tl.sum(ys * ys, axis=0) // N
    eps = tl.load(eps_ptr)
    eps_row = tl.where(sh >= 0, eps >> tl.minimum(2 * down, 62), tl.minimum(eps, (1 << 61) >> (2 * up)) << (2 * up))
    std = _isqrt(tl.maximum(var + eps_row, 1))
    norm = (y * ((1 << 30) // std)) >> (sh + 30 - NORM_BITS_)
    m = tl.load(m_ptr + offs, mask=valid, other=0).to(tl.int64)
    e = tl.load(e_ptr + offs, mask=valid, other=0).to(tl.int64)
    beta = tl.load(beta_ptr + offs, mask=valid, other=0).to(tl.int64)
    out = rshift_round(norm * m + beta, e)
    out = tl.minimum(tl.maximum(out, -QMAX), QMAX)
    tl.store(y_ptr + row * N + offs, out.to(y_ptr.dtype.element_ty), mask=valid)


@torch.library.custom_op("ibert::layernorm_cpp", mutates_args=())
def _layernorm_cpp_op(x: torch.Tensor, eps_int: torch.Tensor, m: torch.Tensor, e: torch.Tensor,
                      beta_int: torch.Tensor, bits: int) -> torch.Tensor:
    """The C++ kernel as a registered op. x: [R, N] int32 contiguous; the rest as `layernorm`'s."""
    return cpp_ops().layernorm(x, eps_int.reshape(-1), m, e, beta_int, bits)


@_layernorm_cpp_op.register_fake
def _(x, eps_int, m, e, beta_int, bits):
    return x.new_empty(x.shape, dtype=out_dtype(bits))


def layernorm(
    x: torch.Tensor, eps_int: torch.Tensor, m: torch.Tensor, e: torch.Tensor, beta_int: torch.Tensor,
    bits: int = 8, backend: str = "auto", config: dict | None = None,
) -> torch.Tensor:
    """Integer-only LayerNorm over the last dimension.

    x: [..., N] int32 (e.g. the 22-bit residual sum), |x| < max_input(N), per-tensor scale s_in.
    eps_int, m, e, beta_int: from `layernorm_params(s_in, gamma, beta, eps, s_out, bits)`.
    Returns [..., N] of scale s_out on `bits` bits (int8 for bits <= 8, else int32).
    backend: "auto", "triton", "torch" or "cpp" (the C++ kernel, what "auto" picks on x86 CPUs with AVX-512).
    config: Triton launch configuration ({num_warps}); default from `tuning.row_config`.
    """
    check_tensor("x", x, (torch.int32,))
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    n = x.shape[-1]
    if n >= 2**16:
        raise ValueError(f"layernorm rows must be shorter than 65536, got {n}")
    if x.numel():
        bound, (lo, hi) = max_input(n), torch.aminmax(x)
        torch._assert_async((hi <= bound - 1) & (lo >= 1 - bound),
                            f"layernorm: |x| must be below 2**{bound.bit_length() - 1} for rows of {n} (exact in int64)")
    check_bits(bits)
    check_tensor("eps_int", eps_int, (torch.int64,))
    check_multiplier(m, e, n)
    check_tensor("beta_int", beta_int, (torch.int64,), 1)
    if m.numel() != n or beta_int.numel() != n:
        raise ValueError(f"m, e and beta_int must have one element per channel ({n})")
    check_same_device(x=x, eps_int=eps_int, m=m, e=e, beta_int=beta_int)
    backend = resolve_cpu_backend(backend, x)
    if backend == "cpp" and x.numel():
        return _layernorm_cpp_op(x.reshape(-1, n).contiguous(), eps_int, m, e, beta_int, bits).view(x.shape)
    if backend != "triton":
        return _layernorm_torch(x, eps_int, m, e, beta_int, bits)
    x = x.contiguous()
    y = torch.empty(x.shape, dtype=out_dtype(bits), device=x.device)
    rows = x.numel() // n
    cfg = launch_config("layernorm", config, n, x.device)
    _layernorm_kernel[(rows,)](
        x, eps_int, m, e, beta_int, y, n,
        QMAX=qmax(bits), VAR_BITS_=VAR_BITS, MIN_SHIFT_=MIN_SHIFT, NORM_BITS_=NORM_BITS, BLOCK_N=triton.next_power_of_2(n),
        num_warps=cfg["num_warps"],
    )
    return y
