"""int8 x int8 -> int32 matrix products with a fused epilogue: bias, dyadic requantization, residual add.

`int8_matmul` serves the linear layers (activations [M, K] times weights [N, K]); `int8_bmm` serves attention
(`Q K^T`, and `P V` with the 0..255 softmax output `P` as uint8, computed as `(P - 128) V + 128 colsum(V)`).
The linear layers' requantizing products also run as C++ kernels on x86 CPUs with AVX-512 VNNI (backend "cpp",
what "auto" picks there): the epilogue works on the accumulators in registers, as the Triton kernel's does.
A weight's owner packs it once (`pack_weight`) in the layout this CPU's kernel reads and passes the `PackedWeight`
in its place; a bare weight is packed on every call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels._cpu import cpp_available, cpp_ops, cpu_gemm_route, resolve_cpu_backend
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
)
from kernels.gelu import NUM_PARAMS as GELU_PARAMS
from kernels.gelu import gelu_epilogue, gelu_reference
from kernels.requant import load_multiplier, requant_epilogue, requantize_reference
from kernels.tuning import cpu_blocking_args, gemm_config, validate_config


@triton.jit
def _int8_gemm_kernel(
    a_ptr,  # [B, M, K] int8, or uint8 when A_UNSIGNED
    b_ptr,  # [B, N, K] int8 (any strides)
    c_ptr,  # [B, M, N] int32, or int8/int32 when REQUANT
    bias_ptr,  # [N] int32
    m_ptr, e_ptr,  # [N] (PER_CHANNEL) or [1] int32
    r_ptr,  # [M, N] residual, any int dtype, row-major
    mr_ptr, er_ptr,  # [N] (RES_PER_CHANNEL) or [1] int32
    gp_ptr,  # [5] int64 i-GELU constants (GELU)
    m2_ptr, e2_ptr,  # [N] (GELU_PER_CHANNEL) or [1] int32, requantization after i-GELU (GELU)
    M, N, K,
    stride_ab, stride_am, stride_ak,
    stride_bb, stride_bn, stride_bk,
    stride_cb, stride_cm, stride_cn,
    QMAX: tl.constexpr,
    HAS_BIAS: tl.constexpr, REQUANT: tl.constexpr, PER_CHANNEL: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, RES_PER_CHANNEL: tl.constexpr, A_UNSIGNED: tl.constexpr, GELU: tl.constexpr,
    GELU_PER_CHANNEL: tl.constexpr, QMAX2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped ordering: GROUP_M row-blocks share each column-block of B while it is in L2.
    group_size = GROUP_M * num_pid_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + batch * stride_ab + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + batch * stride_bb + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None] * stride_bk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    b_colsum = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0)
        b = tl.load(b_ptrs, mask=(offs_n[None, :] < N) & (offs_k[:, None] < k_left), other=0)
        if A_UNSIGNED:
            a = (a.to(tl.int32) - 128).to(tl.int8)
            b_colsum += tl.sum(b.to(tl.int32), axis=0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if A_UNSIGNED:
        acc += 128 * b_colsum[None, :]

    mask_n = offs_n < N
    mask_c = (offs_m[:, None] < M) & mask_n[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0)[None, :]
    if REQUANT:
        m, e = load_multiplier(m_ptr, e_ptr, offs_n, mask_n, PER_CHANNEL)  # [BLOCK_N] or scalars
        y = rshift_round(acc.to(tl.int64) * m, e)
        if HAS_RESIDUAL:
            r = tl.load(r_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :], mask=mask_c, other=0)
            mr, er = load_multiplier(mr_ptr, er_ptr, offs_n, mask_n, RES_PER_CHANNEL)
            y += rshift_round(r.to(tl.int64) * mr, er)
        out = tl.minimum(tl.maximum(y, -QMAX), QMAX)
        if GELU:
            g = gelu_epilogue(out.to(tl.int32), tl.load(gp_ptr).to(tl.int32), tl.load(gp_ptr + 1).to(tl.int32),
                              tl.load(gp_ptr + 2).to(tl.int32), tl.load(gp_ptr + 3).to(tl.int32),
                              tl.load(gp_ptr + 4).to(tl.int32), QMAX)
            m2, e2 = load_multiplier(m2_ptr, e2_ptr, offs_n, mask_n, GELU_PER_CHANNEL)
            out = requant_epilogue(g.to(tl.int64), m2, e2, QMAX2)
    else:
        out = acc
    c_ptrs = c_ptr + batch * stride_cb + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=mask_c)


def _gemm_triton(a, b, bias, m, e, bits, residual, m_res, e_res, config, gelu=None):
    """a: [B, M, K], b: [B, N, K] (any strides) -> [B, M, N]. gelu: (params, m2, e2, bits2) or None."""
    B, M, K = a.shape
    N = b.shape[1]
    requant = m is not None
    final_bits = gelu[3] if gelu is not None else bits
    c = torch.empty((B, M, N), dtype=out_dtype(final_bits) if requant else torch.int32, device=a.device)
    cfg = dict(validate_config(config)) if config is not None else gemm_config(M, N, K, a.device)
    num_warps, num_stages = cfg.pop("num_warps", 4), cfg.pop("num_stages", 3)
    dummy = c
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), B)
    _int8_gemm_kernel[grid](
        a, b, c,
        bias if bias is not None else dummy,
        m if requant else dummy, e if requant else dummy,
        residual if residual is not None else dummy,
        m_res if residual is not None else dummy, e_res if residual is not None else dummy,
        *(gelu[:3] if gelu is not None else (dummy, dummy, dummy)),
        M, N, K,
        *a.stride(), *b.stride(), *c.stride(),
        QMAX=qmax(bits) if requant else 0,
        HAS_BIAS=bias is not None, REQUANT=requant, PER_CHANNEL=requant and m.numel() > 1,
        HAS_RESIDUAL=residual is not None, RES_PER_CHANNEL=residual is not None and m_res.numel() > 1,
        A_UNSIGNED=a.dtype == torch.uint8,
        GELU=gelu is not None, GELU_PER_CHANNEL=gelu is not None and gelu[1].numel() > 1,
        QMAX2=qmax(gelu[3]) if gelu is not None else 0,
        num_warps=num_warps, num_stages=num_stages, **cfg,
    )
    return c


def _int_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`torch._int_mm(a, b)` for a [M, K], b [K, N] int8, exact int32, for every shape on every device.
    With K = 1, `b` can arrive as a view with strides (1, 1), which `torch._int_mm` silently leaves unwritten
    (torch 2.13): the outer product instead. CUDA's `_int_mm` wants M > 16 and K, N multiples of 8."""
    M, K = a.shape
    N = b.shape[1]
    if K == 1:
        return torch.mul(a.int(), b.int(), out=out)
    if a.is_cuda and (M <= 16 or K % 8 or N % 8):
        return _padded_int_mm(a, b, out)
    if not a.is_cuda and cpu_gemm_route() == "fp32":
        return _int_mm_fp32(a, b, out)
    return torch._int_mm(a, b, out=out)


FP32_EXACT_K = 1024  # int8 products are at most 2^14 in magnitude: sums of 1024 of them are float32-exact (2^24)


def _int_mm_fp32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Exact int32 `a @ b` for int8 a [..., M, K], b [..., K, N] through float32 GEMMs over chunks of
    `FP32_EXACT_K` along K: every partial sum is an integer of magnitude <= 2^24, which float32 holds exactly,
    so the result is exact whatever order the GEMM adds in. The chunks add up in int32."""
    K = a.shape[-1]
    acc = None
    for k in range(0, max(K, 1), FP32_EXACT_K):
        part = torch.matmul(a[..., k:k + FP32_EXACT_K].float(), b[..., k:k + FP32_EXACT_K, :].float()).int()
        acc = part if acc is None else acc.add_(part)
    return acc if out is None else out.copy_(acc)


def _padded_int_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`_int_mm` on operands zero-padded to M >= 17 and K, N multiples of 8 (zeros add nothing: exact)."""
    (M, K), N = a.shape, b.shape[1]
    pad = lambda n, to: max(-(-n // to) * to, to)
    a_pad = a.new_zeros(max(M, 17), pad(K, 8))
    a_pad[:M, :K] = a
    b_pad = b.new_zeros(a_pad.shape[1], pad(N, 8))
    b_pad[:K, :N] = b
    c = torch._int_mm(a_pad, b_pad)[:M, :N]
    return c if out is None else out.copy_(c)


def _matmul_reference(a: torch.Tensor, b: torch.Tensor, b_t_fp32: torch.Tensor | None = None) -> torch.Tensor:
    """Exact int32 products: a [M, K] int8, b [N, K] int8 -> [M, N]; `_int_mm` wants b as a [K, N] view.
    b_t_fp32: `b.T` as float32 [K, N] (`pack_weight` on the fp32 route), read as it is (exact on any route)."""
    if b_t_fp32 is not None:
        return _int_mm_fp32(a, b_t_fp32)
    return _int_mm(a, b.t())


def _bmm_reference(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """a [B, M, K] int8/uint8, b [B, N, K] int8 -> (int32 [B, M, N], correction [B, 1, N] or None): exact
    `a @ b.T` is their sum.

    One `_int_mm` per batch entry, into one output: on the CPU that is ~6x faster than `torch.bmm` on int32.
    A uint8 `a` runs as `(a - 128) @ b.T + 128 * rowsum(b)`, as in the Triton kernel; the correction is
    left to the (fused) epilogue.
    """
    correction = None
    if a.dtype == torch.uint8:
        a = (a ^ 128).view(torch.int8)  # a - 128
        correction = 128 * b.sum(-1, dtype=torch.int32)[:, None, :]
    if not a.is_cuda and cpu_gemm_route() == "fp32":
        return _int_mm_fp32(a, b.transpose(1, 2)), correction
    out = torch.empty(a.shape[0], a.shape[1], b.shape[1], dtype=torch.int32, device=a.device)
    for i in range(a.shape[0]):
        _int_mm(a[i], b[i].t(), out=out[i])
    return out, correction


def _epilogue_reference(acc, bias, m, e, bits, residual, m_res, e_res):
    if bias is not None:
        acc = acc + bias
    if m is None:
        return acc
    return requantize_reference(acc, m, e, bits, residual, m_res, e_res)


_epilogue_compiled = maybe_compiled(_epilogue_reference)


def _epilogue_torch(acc, bias, m, e, bits, residual, m_res, e_res):
    # Nothing to add or requantize: no call. Compiling that empty graph would make dynamo skip
    # `_epilogue_reference` for good, and every later variant would run eagerly, op by op.
    if bias is None and m is None:
        return acc
    return _epilogue_compiled(acc, bias, m, e, bits, residual, m_res, e_res)


def _gelu_epilogue_reference(acc, bias, m, e, mid_bits, params, m_out, e_out, bits):
    h = requantize_reference(acc if bias is None else acc + bias, m, e, mid_bits).int()
    return requantize_reference(gelu_reference(h, params), m_out, e_out, bits)


_gelu_epilogue_torch = maybe_compiled(_gelu_epilogue_reference)


@dataclass(frozen=True)
class PackedWeight:
    """An int8 weight [N, K] with the layout that this host's kernel for it reads (`pack_weight`)."""

    weight: torch.Tensor  # [N, K] int8
    packed: torch.Tensor | None  # uint8 panels for the C++ kernel, float32 [K, N] for the fp32 route, or None
    version: int  # weight._version when packed: a later in-place change shows

    def is_current(self, weight: torch.Tensor) -> bool:
        """Whether this packs `weight` as it is now."""
        return self.weight is weight and self.version == weight._version


def pack_weight(b: torch.Tensor) -> PackedWeight:
    """b: [N, K] int8 -> the layout its linear kernel reads here, made once by the weight's owner: the C++
    kernel's panels (`b + 128` as uint8 [ceil(N / 64), ceil(K / 4), 64, 4]) on CPUs where it runs, `b.T` as
    float32 [K, N] on the torch path's fp32 route (`cpu_gemm_route`), else none (CUDA and `torch._int_mm` read b)."""
    check_tensor("b", b, (torch.int8,), 2)
    packed = None
    if not b.is_cuda and cpp_available():
        packed = _pack_cpp(b.contiguous())
    elif not b.is_cuda and cpu_gemm_route() == "fp32":
        packed = b.t().float().contiguous()
    return PackedWeight(b, packed, b._version)


@torch.library.custom_op("ibert::pack_weight_cpp", mutates_args=())
def _pack_cpp(b: torch.Tensor) -> torch.Tensor:
    """b [N, K] int8 contiguous -> the C++ kernel's panels (as a registered op: traceable)."""
    return cpp_ops().pack_weight(b)


@_pack_cpp.register_fake
def _(b):
    N, K = b.shape
    return b.new_empty((-(-N // 64), -(-K // 4), 64, 4), dtype=torch.uint8)


@torch.library.custom_op("ibert::linear_cpp", mutates_args=())
def _linear_cpp_op(a: torch.Tensor, packed: torch.Tensor, N: int, bias: torch.Tensor, m: torch.Tensor,
                   e: torch.Tensor, qmax_: int, residual: torch.Tensor, m_res: torch.Tensor, e_res: torch.Tensor,
                   gelu: torch.Tensor, m2: torch.Tensor, e2: torch.Tensor, bits: int,
                   blocking: list[int]) -> torch.Tensor:
    """The C++ kernel as a registered op (traceable, seen by dispatch modes). a: [M, K] int8 with K a multiple of
    4; packed: the panels of a weight [N, K'], K' <= K (the rest counts as zero); empty bias / residual / gelu mean
    none; blocking: [rows, tiles, panel_major], or empty for the tuned one. Returns [M, N], `bits`-bit."""
    return cpp_ops().linear(a, packed, N, bias, m, e, qmax_, residual, m_res, e_res, gelu, m2, e2, bits, blocking)


@_linear_cpp_op.register_fake
def _(a, packed, N, bias, m, e, qmax_, residual, m_res, e_res, gelu, m2, e2, bits, blocking):
    return a.new_empty((a.shape[0], N), dtype=out_dtype(bits))


def _linear_cpp(a, b, packed, bias, m, e, bits, residual=None, m_res=None, e_res=None, gelu=None, config=None):
    """a [M, K] int8, b [N, K] int8 (packed: its panels, or None) -> requantized [M, N]. gelu: (params, m2, e2,
    bits2): m, e then take the accumulator to `bits` (the i-GELU input) and (m2, e2) the i-GELU output to bits2.
    config: a C++ blocking (`tuning.validate_cpu_blocking`), or None for the tuned one."""
    if a.shape[1] % 4:  # the kernel reads activations four at a time; the packed weight is zero there
        a = F.pad(a, (0, 4 - a.shape[1] % 4))
    none32 = a.new_empty(0, dtype=torch.int32)
    g, m2, e2, out_bits = gelu if gelu is not None else (a.new_empty(0, dtype=torch.int64), none32, none32, bits)
    return _linear_cpp_op(
        a.contiguous(), _pack_cpp(b.contiguous()) if packed is None else packed, b.shape[0],
        none32 if bias is None else bias, m.reshape(-1), e.reshape(-1), qmax(bits),
        none32 if residual is None else residual.contiguous(), none32 if residual is None else m_res.reshape(-1),
        none32 if residual is None else e_res.reshape(-1), g.reshape(-1).contiguous(), m2.reshape(-1),
        e2.reshape(-1), out_bits, [] if config is None else cpu_blocking_args(config))


def _check_epilogue(n, bias, m, e, bits, residual, m_res, e_res, out_shape):
    if bias is not None:
        check_tensor("bias", bias, (torch.int32,), 1)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have {n} elements (one per output channel), got {bias.shape[0]}")
    if (m is None) != (e is None):
        raise ValueError("requantization needs both m and e")
    if m is not None:
        check_bits(bits)
        check_multiplier(m, e, n)
    if residual is not None:
        if m is None:
            raise ValueError("a residual can only be added in a requantizing epilogue (give m and e)")
        check_tensor("residual", residual, (torch.int8, torch.int32))
        if tuple(residual.shape) != tuple(out_shape):
            raise ValueError(f"residual shape {tuple(residual.shape)} != output shape {tuple(out_shape)}")
        if m_res is None or e_res is None:
            raise ValueError("residual needs its multiplier m_res and shift e_res")
        check_multiplier(m_res, e_res, n)


def _linear_weight(a: torch.Tensor, b: torch.Tensor | PackedWeight):
    """The linear ops' weight checked against `a`: (int8 [N, K], the C++ panels or None, float32 b.T or None)."""
    packed = None
    if isinstance(b, PackedWeight):
        if not b.is_current(b.weight):
            raise ValueError("the PackedWeight's weight changed in place after packing: pack it again")
        b, packed = b.weight, b.packed
    check_tensor("b", b, (torch.int8,), 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)} (b is [N, K])")
    layout = lambda dtype: packed if packed is not None and packed.dtype == dtype else None
    return b, layout(torch.uint8), layout(torch.float32)


def int8_matmul(
    a: torch.Tensor, b: torch.Tensor | PackedWeight, bias: torch.Tensor | None = None,
    m: torch.Tensor | None = None, e: torch.Tensor | None = None, bits: int = 8,
    residual: torch.Tensor | None = None, m_res: torch.Tensor | None = None, e_res: torch.Tensor | None = None,
    backend: str = "auto", config: dict | None = None,
) -> torch.Tensor:
    """`a @ b.T (+ bias)` in exact integers, optionally requantized in the same kernel.

    a: [M, K] int8 activations; b: [N, K] int8 weights (a linear layer's layout), or their `pack_weight(b)`
    (packed once by their owner; a bare weight is packed on every call where the kernel reads another layout);
    bias: [N] int32. m, e: dyadic multiplier (int32, [1] or [N]); given, the output is
        clamp(round((a @ b.T + bias) * m / 2**e) [+ round(residual * m_res / 2**e_res)]) on `bits` bits,
    int8 for bits <= 8 else int32; without them the output is the int32 accumulator (+ bias).
    residual: [M, N] int8/int32, added with its own multiplier (m_res, e_res), [1] or [N] int32.
    backend: "auto", "triton", "torch" or "cpp" (the C++ kernel; without m, e the int32 products run the reference).
    config: the tile configuration of the kernel that runs, default from `tuning`: Triton's (BLOCK_M/N/K, GROUP_M,
    num_warps, num_stages) or the C++ kernel's blocking (rows, tiles, order).
    """
    check_tensor("a", a, (torch.int8,), 2)
    b, panels, b_t_fp32 = _linear_weight(a, b)
    M, N = a.shape[0], b.shape[0]
    _check_epilogue(N, bias, m, e, bits, residual, m_res, e_res, (M, N))
    check_same_device(a=a, b=b, bias=bias, m=m, e=e, residual=residual, m_res=m_res, e_res=e_res)
    backend = resolve_cpu_backend(backend, a)
    if backend == "cpp" and m is not None and a.numel() and b.numel():
        return _linear_cpp(a, b, panels, bias, m, e, bits, residual, m_res, e_res, config=config)
    if backend != "triton":
        return _epilogue_torch(_matmul_reference(a, b, b_t_fp32), bias, m, e, bits, residual, m_res, e_res)
    if residual is not None and not residual.is_contiguous():
        raise ValueError("the Triton epilogue needs a contiguous residual")
    return _gemm_triton(a[None], b[None], bias, m, e, bits, residual, m_res, e_res, config)[0]


def int8_bmm(
    a: torch.Tensor, b: torch.Tensor, m: torch.Tensor | None = None, e: torch.Tensor | None = None,
    bits: int = 8, backend: str = "auto", config: dict | None = None,
) -> torch.Tensor:
    """Batched `a @ b.transpose(-1, -2)` in exact integers, optionally requantized per tensor.

    a: [B, M, K] int8, or uint8 (the 0..255 softmax output); b: [B, N, K] int8, any strides
    (pass `v.transpose(-1, -2)` for `P @ V`). m, e: per-tensor dyadic multiplier ([1] int32).
    Returns [B, M, N]: int32 accumulators, or `bits`-bit integers when m, e are given.
    """
    check_tensor("a", a, (torch.int8, torch.uint8), 3)
    check_tensor("b", b, (torch.int8,), 3)
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ValueError(f"shapes do not match: a is {tuple(a.shape)} [B, M, K], b is {tuple(b.shape)} [B, N, K]")
    _check_epilogue(1, None, m, e, bits, None, None, None, None)
    check_same_device(a=a, b=b, m=m, e=e)
    if resolve_cpu_backend(backend, a) != "triton":  # no C++ kernel: "cpp" runs the reference
        return _epilogue_torch(*_bmm_reference(a, b), m, e, bits, None, None, None)
    return _gemm_triton(a, b, None, m, e, bits, None, None, None, config)


def int8_matmul_gelu(
    a: torch.Tensor, b: torch.Tensor | PackedWeight, bias: torch.Tensor | None, m: torch.Tensor, e: torch.Tensor,
    gelu_params: torch.Tensor, m_out: torch.Tensor, e_out: torch.Tensor, mid_bits: int = 16, bits: int = 8,
    backend: str = "auto", config: dict | None = None,
) -> torch.Tensor:
    """The FFN's first half in one kernel: `gelu(requant(a @ b.T + bias))`, requantized again.

    a: [M, K] int8; b: [N, K] int8 or its `pack_weight(b)`; bias: [N] int32; m, e: [1] or [N] int32 to `mid_bits` (<= 16) bits;
    gelu_params: int64 [5, 1] from `gelu_params(mid scale)` (per tensor); m_out, e_out: [1] or [N] int32 taking
    the i-GELU output (scale from `gelu_params`) to `bits` bits. Returns [M, N], int8 for bits <= 8.
    Equals `gelu(int8_matmul(a, b, bias, m, e, mid_bits), gelu_params, m_out, e_out, bits)`. config: as
    `int8_matmul`'s.
    """
    check_tensor("a", a, (torch.int8,), 2)
    b, panels, b_t_fp32 = _linear_weight(a, b)
    M, N = a.shape[0], b.shape[0]
    check_bits(mid_bits, 2, 16)
    _check_epilogue(N, bias, m, e, mid_bits, None, None, None, (M, N))
    check_tensor("gelu_params", gelu_params, (torch.int64,), 2)
    if tuple(gelu_params.shape) != (GELU_PARAMS, 1):
        raise ValueError(f"gelu_params must be per tensor, [{GELU_PARAMS}, 1], got {tuple(gelu_params.shape)}")
    check_bits(bits)
    check_multiplier(m_out, e_out, N)
    check_same_device(a=a, b=b, bias=bias, m=m, e=e, gelu_params=gelu_params, m_out=m_out, e_out=e_out)
    backend = resolve_cpu_backend(backend, a)
    if backend == "cpp" and a.numel() and b.numel():
        return _linear_cpp(a, b, panels, bias, m, e, mid_bits, gelu=(gelu_params, m_out, e_out, bits), config=config)
    if backend != "triton":
        return _gelu_epilogue_torch(_matmul_reference(a, b, b_t_fp32), bias, m, e, mid_bits, gelu_params, m_out, e_out, bits)
    gelu = (gelu_params.contiguous(), m_out, e_out, bits)
    return _gemm_triton(a[None], b[None], bias, m, e, mid_bits, None, None, None, config, gelu)[0]
