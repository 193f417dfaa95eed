"""The integer self-attention core of every head: scores = Q K^T, i-softmax, context = P V requantized.

It reads the fused QKV projection's int8 output and returns the context laid out for the output projection.
Backends: "torch" (the reference: `int8_bmm`, `softmax`, `int8_bmm`), "triton" (one fused kernel per block of
queries of one head, whole rows of keys in registers, for S <= 512; longer rows run the three ops as Triton
kernels), "cpp" (one fused C++ kernel per (batch, head) for x86 CPUs with AVX-512 VNNI, built on first use).
The fused kernels never write the int32 scores to memory. "auto" takes Triton for CUDA tensors, else "cpp"
where it builds, else torch.
"""
from __future__ import annotations

import torch

from kernels._cpu import cpp_ops, resolve_cpu_backend
from kernels._triton import tl, triton
from kernels._utils import check_bits, check_multiplier, check_same_device, check_tensor, qmax, rshift_round
from kernels.gemm import int8_bmm
from kernels.softmax import CLIP, MAX_Z
from kernels.softmax import NUM_PARAMS as SOFTMAX_PARAMS
from kernels.softmax import softmax, softmax_rows
from kernels.tuning import launch_config

MAX_FUSED_S = 512  # the fused Triton kernel keeps [BLOCK_M, next_pow2(S)] scores in registers


def attention_reference(qkv, heads, params, m, e, mask, head_mask, softmax_bits, bits, backend):
    """The spec, in the ops it is made of (`backend` is theirs: "torch" or "triton")."""
    B, S, H3 = qkv.shape
    H = H3 // 3
    d = H // heads
    q, k, v = qkv.view(B, S, 3, heads, d).permute(2, 0, 3, 1, 4).reshape(3, B * heads, S, d).unbind(0)
    # K^T laid out [B*heads, d, S]: each head's product reads a contiguous [K, N] operand
    scores = int8_bmm(q.contiguous(), k.transpose(1, 2).contiguous().transpose(1, 2), backend=backend)
    probs = softmax(scores.view(B, heads, S, S), params, mask, softmax_bits, backend=backend)
    if head_mask is not None:
        probs = probs * head_mask.view(1, heads, 1, 1)
    ctx = int8_bmm(probs.view(B * heads, S, S), v.contiguous().transpose(1, 2), m, e, bits, backend=backend)
    return ctx.view(B, heads, S, d).transpose(1, 2).reshape(B, S, H), probs


@triton.jit
def _attention_kernel(
    qkv_ptr,  # [B*S, 3*H] int8: per token q, k, v, each [heads, D]
    mask_ptr,  # [B, S] int32 additive (HAS_MASK)
    hm_ptr,  # [heads] uint8 (HAS_HEAD_MASK)
    p_ptr,  # [5] int64 softmax constants
    m_ptr, e_ptr,  # [1] int32, P V -> context
    ctx_ptr,  # [B*S, H] int8
    probs_ptr,  # [B, heads, S, S] uint8 (RETURN_PROBS)
    S, H, heads, D,
    QMAX: tl.constexpr, OUT_BITS: tl.constexpr, MAX_Z_: tl.constexpr, CLIP_: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_HEAD_MASK: tl.constexpr, RETURN_PROBS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    row_m = (b * S + offs_m).to(tl.int64) * 3 * H
    row_s = (b * S + offs_s).to(tl.int64) * 3 * H
    valid_m = offs_m < S
    valid_s = offs_s < S
    valid_d = offs_d < D
    q = tl.load(qkv_ptr + row_m[:, None] + h * D + offs_d[None, :], mask=valid_m[:, None] & valid_d[None, :], other=0)
    kt = tl.load(qkv_ptr + row_s[None, :] + H + h * D + offs_d[:, None], mask=valid_d[:, None] & valid_s[None, :],
                 other=0)
    x = tl.dot(q, kt)  # [BLOCK_M, BLOCK_S] int32, exact
    mk = tl.zeros_like(offs_s)
    if HAS_MASK:
        mk = tl.load(mask_ptr + b * S + offs_s, mask=valid_s, other=0)
    p = softmax_rows(x, mk[None, :], valid_s[None, :], p_ptr, OUT_BITS, MAX_Z_, CLIP_)
    if HAS_HEAD_MASK:
        p *= tl.load(hm_ptr + h).to(tl.int32)
    if RETURN_PROBS:
        probs = probs_ptr + (bh.to(tl.int64) * S + offs_m[:, None]) * S + offs_s[None, :]
        tl.store(probs, p.to(tl.uint8), mask=valid_m[:, None] & valid_s[None, :])
    # P is 0..255: P V = (P - 128) V + 128 colsum(V), both int8 products
    v = tl.load(qkv_ptr + row_s[:, None] + 2 * H + h * D + offs_d[None, :], mask=valid_s[:, None] & valid_d[None, :],
                other=0)
    acc = tl.dot((p - 128).to(tl.int8), v) + 128 * tl.sum(v.to(tl.int32), axis=0)[None, :]
    y = rshift_round(acc.to(tl.int64) * tl.load(m_ptr).to(tl.int64), tl.load(e_ptr).to(tl.int64))
    y = tl.minimum(tl.maximum(y, -QMAX), QMAX)
    out = ctx_ptr + (b * S + offs_m)[:, None].to(tl.int64) * H + h * D + offs_d[None, :]
    tl.store(out, y.to(tl.int8), mask=valid_m[:, None] & valid_d[None, :])


def _attention_triton(qkv, heads, params, m, e, mask, head_mask, softmax_bits, bits, return_probs, config):
    B, S, H3 = qkv.shape
    H = H3 // 3
    qkv = qkv.contiguous()
    ctx = torch.empty((B, S, H), dtype=torch.int8, device=qkv.device)
    probs = torch.empty((B, heads, S, S) if return_probs else (1,), dtype=torch.uint8, device=qkv.device)
    cfg = launch_config("attention", config, S, qkv.device)
    grid = (triton.cdiv(S, cfg["BLOCK_M"]), B * heads)
    _attention_kernel[grid](
        qkv, mask if mask is not None else qkv, head_mask if head_mask is not None else qkv, params, m, e, ctx, probs,
        S, H, heads, H // heads,
        QMAX=qmax(bits), OUT_BITS=softmax_bits, MAX_Z_=MAX_Z, CLIP_=CLIP, HAS_MASK=mask is not None,
        HAS_HEAD_MASK=head_mask is not None, RETURN_PROBS=return_probs, BLOCK_M=cfg["BLOCK_M"],
        BLOCK_S=max(32, triton.next_power_of_2(S)), BLOCK_D=max(32, triton.next_power_of_2(H // heads)),
        num_warps=cfg["num_warps"],
    )
    return ctx, probs if return_probs else None


@torch.library.custom_op("ibert::attention_cpp", mutates_args=())
def _attention_cpp_op(qkv: torch.Tensor, mask: torch.Tensor, params: torch.Tensor, m: torch.Tensor, e: torch.Tensor,
                      head_mask: torch.Tensor, heads: int, softmax_bits: int, qmax_: int,
                      return_probs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The C++ kernel as a registered op: traceable (torch.compile, export) and seen by dispatch modes.
    qkv: [B, S, 3 H] int8; mask: [B, S] int32 or empty; head_mask: [heads] uint8 or empty.
    Returns ctx [B, S, H] int8 and probs [B, heads, S, S] uint8 (empty unless return_probs)."""
    B, S, H3 = qkv.shape
    ctx, probs = cpp_ops().attention(qkv.reshape(B * S, H3).contiguous(), mask.contiguous(), params.contiguous(),
                                           m.contiguous(), e.contiguous(), head_mask.contiguous(), B, heads,
                                           softmax_bits, qmax_, return_probs)
    return ctx.view(B, S, H3 // 3), probs


@_attention_cpp_op.register_fake
def _(qkv, mask, params, m, e, head_mask, heads, softmax_bits, qmax_, return_probs):
    B, S, H3 = qkv.shape
    probs_shape = (B, heads, S, S) if return_probs else (0,)
    return qkv.new_empty((B, S, H3 // 3)), qkv.new_empty(probs_shape, dtype=torch.uint8)


def attention(
    qkv: torch.Tensor, heads: int, params: torch.Tensor, m: torch.Tensor, e: torch.Tensor,
    mask: torch.Tensor | None = None, head_mask: torch.Tensor | None = None, softmax_bits: int = 8, bits: int = 8,
    return_probs: bool = False, backend: str = "auto", config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Integer self-attention of every head, exact.

    qkv: [B, S, 3 H] int8, per token the query, key and value, each [heads, H / heads] (one fused projection).
    params: int64 [5] from `softmax_params(s_q s_k / sqrt(H / heads))`; mask: optional [B, S] int32 additive
    (0 keeps a key, -2**30 masks it); head_mask: optional [heads] uint8 of zeros and ones.
    m, e: [1] int32 dyadic multiplier taking P V (scale 2**-softmax_bits s_v) to the `bits`-bit context.
    Returns the context [B, S, H] int8 (heads concatenated) and, with return_probs, the probabilities
    [B, heads, S, S] uint8 of scale 2**-softmax_bits (else None).
    config: the fused Triton kernel's launch configuration ({BLOCK_M, num_warps}); default from `tuning`.
    """
    check_tensor("qkv", qkv, (torch.int8,), 3)
    backend = resolve_cpu_backend(backend, qkv)
    B, S, H3 = qkv.shape
    if not isinstance(heads, int) or heads < 1 or H3 % (3 * heads):
        raise ValueError(f"qkv's last dimension ({H3}) must be 3 * heads * head_size, got heads={heads!r}")
    check_tensor("params", params, (torch.int64,), 1)
    if params.numel() != SOFTMAX_PARAMS:
        raise ValueError(f"params must have {SOFTMAX_PARAMS} elements (from softmax_params), got {params.numel()}")
    check_multiplier(m, e, 1)
    check_bits(softmax_bits, 2, 8)
    check_bits(bits, 2, 8)
    if mask is not None:
        check_tensor("mask", mask, (torch.int32,), 2)
        if tuple(mask.shape) != (B, S):
            raise ValueError(f"mask must be [B, S] = {(B, S)}, got {tuple(mask.shape)}")
    if head_mask is not None:
        check_tensor("head_mask", head_mask, (torch.uint8,), 1)
        if head_mask.numel() != heads:
            raise ValueError(f"head_mask must have one entry per head ({heads}), got {head_mask.numel()}")
        if bool((head_mask > 1).any()):  # one meaning on every backend: keep (1) or drop (0) a head
            raise ValueError(f"head_mask must hold zeros and ones only, got {head_mask.tolist()}")
    check_same_device(qkv=qkv, params=params, m=m, e=e, mask=mask, head_mask=head_mask)
    if qkv.numel() == 0:
        probs = qkv.new_empty((B, heads, S, S), dtype=torch.uint8) if return_probs else None
        return qkv.new_empty((B, S, H3 // 3)), probs
    if backend == "cpp":
        empty_mask = qkv.new_empty(0, dtype=torch.int32)
        ctx, probs = _attention_cpp_op(qkv, empty_mask if mask is None else mask, params, m.reshape(1), e.reshape(1),
                                       qkv.new_empty(0, dtype=torch.uint8) if head_mask is None else head_mask,
                                       heads, softmax_bits, qmax(bits), return_probs)
        return ctx, probs if return_probs else None
    if backend == "triton" and S <= MAX_FUSED_S:
        return _attention_triton(qkv, heads, params, m, e, mask, head_mask, softmax_bits, bits, return_probs, config)
    ctx, probs = attention_reference(qkv, heads, params, m, e, mask, head_mask, softmax_bits, bits, backend)
    return ctx, probs if return_probs else None
