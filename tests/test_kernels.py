"""Triton kernels (interpreter on the CPU) against their torch references: exactly equal."""
import math
import warnings

import pytest
import torch

import kernels
from kernels import (
    dyadic, gelu, gelu_params, int8_bmm, int8_matmul, layernorm, layernorm_params, requantize, softmax,
    softmax_params,
)
from conftest import on_device
from kernels.layernorm import isqrt_reference, max_input
from kernels.softmax import MAX_SCALE, MAX_Z, exp_scale, floor_div_small, int_exp_reference, softmax_reference

I32 = (-(2**31), 2**31 - 1)


def randint(lo, hi, shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64).to(dtype)


def both(fn, *args, **kw):
    """(Triton on the test device, the torch reference where the arguments are), both on the arguments' device."""
    device = next(t.device for t in torch.utils._pytree.tree_leaves((args, kw)) if isinstance(t, torch.Tensor))
    a = fn(*on_device(args), backend="triton", **on_device(kw)).to(device)
    b = fn(*args, backend="torch", **kw)
    assert a.dtype == b.dtype and a.shape == b.shape
    return a, b


# ---------------------------------------------------------------- dyadic / requantize
def test_dyadic_precision_and_range():
    r = torch.cat([torch.rand(1000, dtype=torch.float64) * 10.0 ** torch.randint(-12, 0, (1000,)).double(),
                   torch.tensor([1.0, 0.5, 0.999999999, -0.3, 3.0])])
    m, e = dyadic(r)
    assert m.dtype == torch.int32 and e.dtype == torch.int32
    assert (e >= 0).all() and (e <= 62).all() and (m.abs() < 2**30).all()
    err = (m.double() * torch.pow(2.0, -e.double()) - r).abs()
    normal = r.abs() >= 2.0**-32
    assert (err[normal] <= r[normal].abs() * 2.0**-30).all()
    assert (err[~normal] < 2.0**-62).all()
    m0, e0 = dyadic(torch.tensor([0.0, 1e-300]))
    assert (m0 == 0).all()


def test_dyadic_rejects_too_large_ratio():
    with pytest.raises(RuntimeError, match="too large"):
        dyadic(torch.tensor([2.0**30]))


@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (3, 1023), (5, 33)])
@pytest.mark.parametrize("bits", [4, 8, 16, 22])
@pytest.mark.parametrize("per_channel", [False, True])
def test_requantize_exact(shape, bits, per_channel):
    x = randint(*I32, shape, torch.int32)
    x[0, 0], x[-1, -1] = I32
    ratio = torch.rand(shape[-1] if per_channel else 1, dtype=torch.float64) * 1e-6 * 2.0**bits
    m, e = dyadic(ratio)
    a, b = both(requantize, x, m, e, bits)
    assert torch.equal(a, b)
    assert b.abs().max() <= 2 ** (bits - 1) - 1


def test_requantize_residual_exact_and_matches_float():
    x = randint(-(2**20), 2**20, (7, 65), torch.int32, seed=1)
    r = randint(-127, 127, (7, 65), torch.int8, seed=2)
    m, e = dyadic(torch.rand(65, dtype=torch.float64) * 1e-3)
    mr, er = dyadic(torch.tensor([0.37], dtype=torch.float64))
    a, b = both(requantize, x, m, e, 22, residual=r, m_res=mr, e_res=er)
    assert torch.equal(a, b)
    ref = torch.round(x.double() * (m.double() * 2.0 ** -e.double())) + torch.round(r.double() * 0.37)
    assert (b.double() - ref).abs().max() <= 1
    ratios = torch.linspace(0.01, 3.0, 65, dtype=torch.float64)  # a residual multiplier per channel
    mr, er = dyadic(ratios)
    a, b = both(requantize, x, m, e, 22, residual=r, m_res=mr, e_res=er)
    assert torch.equal(a, b)
    ref = torch.round(x.double() * (m.double() * 2.0 ** -e.double())) + torch.round(r.double() * ratios)
    assert (b.double() - ref).abs().max() <= 1
    with pytest.raises(ValueError, match="1 or 65 elements"):
        requantize(x, m, e, 22, residual=r, m_res=mr[:64], e_res=er[:64])


def test_requantize_rounds_half_up():
    m, e = dyadic(torch.tensor([0.5]))
    y = requantize(torch.tensor([1, 3, -1, -3, 2], dtype=torch.int32), m, e, 8, backend="torch")
    assert y.tolist() == [1, 2, 0, -1, 1]


# ---------------------------------------------------------------- int8 GEMM
GEMM_SHAPES = [(1, 1, 1), (7, 7, 7), (1, 1023, 7), (33, 100, 70), (130, 64, 129), (16, 1023, 65)]


@pytest.mark.parametrize("M,K,N", GEMM_SHAPES)
def test_int8_matmul_accumulator_exact(M, K, N):
    a = randint(-128, 127, (M, K), torch.int8, seed=M)
    b = randint(-128, 127, (N, K), torch.int8, seed=N)
    bias = randint(-(2**20), 2**20, (N,), torch.int32)
    for bias_ in (None, bias):
        x, y = both(int8_matmul, a, b, bias_)
        assert torch.equal(x, y)
    assert torch.equal(y, a.long() @ b.long().T + bias)


@pytest.mark.parametrize("M,K,N", GEMM_SHAPES)
@pytest.mark.parametrize("bits", [8, 16])
def test_int8_matmul_requant_residual_exact(M, K, N, bits):
    a = randint(-128, 127, (M, K), torch.int8, seed=1)
    b = randint(-128, 127, (N, K), torch.int8, seed=2)
    bias = randint(-(2**16), 2**16, (N,), torch.int32)
    m, e = dyadic(torch.rand(N, dtype=torch.float64) * 2.0 ** (bits - 16) / math.sqrt(K))
    res = randint(-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1, (M, N), torch.int8 if bits == 8 else torch.int32)
    mr, er = dyadic(torch.tensor([0.6]))
    x, y = both(int8_matmul, a, b, bias, m, e, bits)
    assert torch.equal(x, y)
    x, y = both(int8_matmul, a, b, bias, m, e, bits, res, mr, er)
    assert torch.equal(x, y)
    mrc, erc = dyadic(torch.linspace(0.05, 1.5, N, dtype=torch.float64))  # per channel
    x, y = both(int8_matmul, a, b, bias, m, e, bits, res, mrc, erc)
    assert torch.equal(x, y)
    mt, et = dyadic(torch.tensor([2.0 ** (bits - 17)]))
    x, y = both(int8_matmul, a, b, None, mt, et, bits)
    assert torch.equal(x, y)


def test_int8_matmul_extremes_saturate():
    K = 1023
    a = torch.full((3, K), -128, dtype=torch.int8)
    b = torch.full((5, K), -128, dtype=torch.int8)
    b[1] = 127
    x, y = both(int8_matmul, a, b)
    assert torch.equal(x, y) and y[0, 0] == 128 * 128 * K
    m, e = dyadic(torch.tensor([1e-3]))
    x, y = both(int8_matmul, a, b, None, m, e, 8)
    assert torch.equal(x, y) and y[0, 0] == 127 and y[0, 1] == -127


@pytest.mark.parametrize("B,M,K,N", [(1, 1, 1, 1), (3, 7, 64, 9), (2, 33, 130, 64)])
def test_int8_bmm_exact(B, M, K, N):
    q = randint(-128, 127, (B, M, K), torch.int8)
    k = randint(-128, 127, (B, N, K), torch.int8, seed=3)
    x, y = both(int8_bmm, q, k)
    assert torch.equal(x, y)
    p = randint(0, 255, (B, M, K), torch.uint8, seed=4)
    p[0, 0] = 255
    v = randint(-128, 127, (B, K, N), torch.int8, seed=5)
    x, y = both(int8_bmm, p, v.transpose(1, 2))
    assert torch.equal(x, y)
    assert torch.equal(y, p.long() @ v.long())
    m, e = dyadic(torch.tensor([1e-4]))
    x, y = both(int8_bmm, p, v.transpose(1, 2), m, e, 8)
    assert torch.equal(x, y)


def test_products_with_one_inner_element():
    """K = 1: `torch._int_mm` leaves its output unwritten for a [1, N] operand with strides (1, 1), the view
    that a transposed [N, 1] weight or a transposed head of size 1 is; the references must not use it there."""
    a = randint(-128, 127, (9, 1), torch.int8)
    w = randint(-128, 127, (33, 1), torch.int8, seed=1)
    x, y = both(int8_matmul, a, w)
    assert torch.equal(x, y) and torch.equal(y, a.long() @ w.long().T)
    q = randint(-128, 127, (2, 17, 1), torch.int8, seed=2)
    k = randint(-128, 127, (2, 17, 1), torch.int8, seed=3)
    k_t = k.transpose(1, 2).contiguous().transpose(1, 2)  # the layout attention passes: strides (17, 1, 1)
    x, y = both(int8_bmm, q, k_t)
    assert torch.equal(x, y) and torch.equal(y, q.long() @ k.long().transpose(1, 2))


# ---------------------------------------------------------------- i-GELU
FINE_GELU_SCALE = 4.0 / 32767


@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (3, 1023)])
def test_gelu_exact(shape):
    x = randint(-40000, 40000, shape, torch.int32)
    x[0, 0], x[-1, -1] = I32
    params, _ = gelu_params(torch.tensor(FINE_GELU_SCALE))
    a, b = both(gelu, x, params)
    assert torch.equal(a, b)
    pc, _ = gelu_params(torch.rand(shape[-1]) * 1e-2 + 1e-5)
    for ratio in (torch.tensor([1e-5]), torch.rand(shape[-1]) * 2e-5 + 1e-7):  # per tensor, per channel
        m, e = dyadic(ratio)
        a, b = both(gelu, x, pc, m, e, 8)
        assert torch.equal(a, b)


def test_gelu_float_error_within_paper_bounds():
    """Paper, Table 1 on [-4, 4]: L2 (RMS) 0.0082, Linf 0.018. The float polynomial itself has a max error of
    0.01815 (the paper rounds it to 0.018); the integer version may add up to 3e-4 of input quantization."""
    x = torch.arange(-32767, 32768, dtype=torch.int32)
    params, out_scale = gelu_params(torch.tensor(FINE_GELU_SCALE))
    y = gelu(x, params, backend="torch").double() * out_scale.double()
    ref = torch.nn.functional.gelu(x.double() * FINE_GELU_SCALE)
    err = (y - ref).abs()
    assert err.pow(2).mean().sqrt() <= 0.0082
    u = x.double() * FINE_GELU_SCALE / math.sqrt(2)
    poly = x.double() * FINE_GELU_SCALE * (1 + torch.sign(u) * (1 - 0.2888 * (u.abs().clamp(max=1.769) - 1.769) ** 2)) / 2
    float_max = (poly - ref).abs().max()
    assert float_max <= 0.0182
    assert err.max() <= float_max + 3e-4


def test_gelu_int32_arithmetic_does_not_overflow():
    """The int32 reference equals the same formula evaluated in int64, for every scale and extreme input."""
    x = torch.tensor([I32[0], -32768, -32767, -1, 0, 1, 32767, I32[1]], dtype=torch.int32)
    for s in (1e-9, 1e-6, FINE_GELU_SCALE, 0.1, 10.0):
        params, _ = gelu_params(torch.tensor(s))
        clip, c, k, one, r = params.reshape(5, -1)
        q = x.long().clamp(-32767, 32767)
        t = torch.minimum(q.abs() >> r, clip) - clip
        wide = q * (((torch.sign(q) * (c - t * t)) >> k) + one)
        assert wide.abs().max() < 2**31
        assert torch.equal(gelu(x, params, backend="torch").long(), wide)


@pytest.mark.parametrize("M,K,N", [(1, 7, 5), (33, 100, 70), (7, 1023, 33)])
@pytest.mark.parametrize("out_per_channel", [False, True])
def test_int8_matmul_gelu_exact_and_equals_unfused(M, K, N, out_per_channel):
    a = randint(-128, 127, (M, K), torch.int8, seed=1)
    b = randint(-128, 127, (N, K), torch.int8, seed=2)
    bias = randint(-(2**16), 2**16, (N,), torch.int32)
    m, e = dyadic(torch.rand(N, dtype=torch.float64) * 2.0**-2 / math.sqrt(K))
    params, out_scale = gelu_params(torch.tensor(3e-4))
    out_range = torch.rand(N, dtype=torch.float64) * 0.04 + 1e-3 if out_per_channel else torch.tensor([0.02])
    m2, e2 = dyadic(out_scale.double() / out_range)
    x, y = both(kernels.int8_matmul_gelu, a, b, bias, m, e, params, m2, e2)
    assert torch.equal(x, y) and y.dtype == torch.int8
    h = int8_matmul(a, b, bias, m, e, 16, backend="torch")
    assert torch.equal(y, gelu(h, params, m2, e2, 8, backend="torch"))


# ---------------------------------------------------------------- i-softmax
def test_int_exp_error_bound():
    s = 1e-4
    params = softmax_params(torch.tensor(s))
    x = torch.arange(int(math.floor(-math.log(2) / s)) + 1, 1, dtype=torch.int64)  # (-ln2, 0]
    y = int_exp_reference(x, params).double() * exp_scale(torch.tensor(s))
    assert (y - torch.exp(x.double() * s)).abs().max() <= 2e-3


@pytest.mark.parametrize("x0", [-1, -2, -5, -87, -11357])
def test_floor_div_small_is_floor_division(x0):
    x0 = torch.tensor(x0, dtype=torch.int32)
    d = torch.arange(MAX_Z * x0.item(), 1, dtype=torch.int32)
    assert torch.equal(floor_div_small(d, x0), d // x0)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 7), (1, 4, 1023), (2, 2, 3, 128)])
def test_softmax_exact(shape):
    x = randint(-20000, 20000, shape, torch.int32)
    params = softmax_params(torch.tensor(5e-4))
    a, b = both(softmax, x, params)
    assert torch.equal(a, b) and b.dtype == torch.uint8
    mask = torch.zeros(shape[0], shape[-1], dtype=torch.int32)
    mask[0, shape[-1] // 2:] = -(2**30)
    a, b = both(softmax, x, params, mask)
    assert torch.equal(a, b)
    a, b = both(softmax, x, params, mask, out_bits=16)
    assert torch.equal(a, b) and b.dtype == torch.int32


def test_softmax_extremes_no_overflow():
    x = torch.tensor([[[I32[0], I32[1], 0, I32[1]]], [[5, 5, 5, 5]]], dtype=torch.int32)
    for s in (1e-8, 1e-3, 0.08):
        params = softmax_params(torch.tensor(s))
        a, b = both(softmax, x, params)
        assert torch.equal(a, b)
        assert ((b.long().sum(-1) - 256).abs() <= 4 / 2 + 1).all()
        assert torch.equal(softmax_reference(x.long(), params, None, 8), b)  # no int32 overflow
    long_row = randint(-(2**31), 2**31 - 1, (1, 1, 4096), torch.int32)
    a, b = both(softmax, long_row, softmax_params(torch.tensor(1e-6)))
    assert torch.equal(a, b)


def test_softmax_row_sum_stays_below_2_31():
    """The row sum of exps runs in int32: for the longest row accepted (65535 keys) of equal scores, at the input
    scale whose exp(0) is largest, it stays below 2**31 (summed here in int64). Fine scales are coarsened into
    [2**-14, 2**-13), so sampling that octave densely and the coarse scales up to ln2/8 covers every scale."""
    scales = torch.cat([2.0 ** -torch.linspace(13, 14, 400, dtype=torch.float64),
                        torch.linspace(2.0**-13, MAX_SCALE, 600, dtype=torch.float64)])
    top = {float(s): int(int_exp_reference(torch.zeros(1, dtype=torch.int32), softmax_params(s.reshape(1)))) for s in scales}
    worst = max(top, key=top.get)
    assert top[worst] * 65535 < 2**31
    ex = int_exp_reference(torch.zeros(1, 65535, dtype=torch.int32), softmax_params(torch.tensor(worst, dtype=torch.float64)))
    assert ex.long().sum() == top[worst] * 65535 and ex.sum(dtype=torch.int32) == ex.long().sum()
    p = softmax(torch.zeros(2, 65535, dtype=torch.int32), softmax_params(torch.tensor(worst, dtype=torch.float64)), backend="torch")
    assert (p.long().sum(-1) <= 65535).all()


def test_softmax_fully_masked_negative_rows_do_not_overflow():
    """Every key masked and every score negative: the row maximum is below -2**30, where `top - 2**30` would
    leave int32 (it did: a zero row sum, a division by zero)."""
    x = randint(-3000, -1, (2, 3, 9), torch.int32)
    x[1, 0] = I32[0]
    mask = torch.full((2, 9), -(2**30), dtype=torch.int32)
    mask[1, :4] = I32[0]
    params = softmax_params(torch.tensor(9e-4))
    a, b = both(softmax, x, params, mask)
    assert torch.equal(a, b)
    assert torch.equal(softmax_reference(x.long(), params, mask.long(), 8), b)  # the same in int64
    assert (b.long().sum(-1) >= 256 - 9).all()


def test_softmax_masked_keys_get_zero_and_rows_sum_to_one():
    x = randint(-3000, 3000, (2, 5, 64), torch.int32)
    mask = torch.zeros(2, 64, dtype=torch.int32)
    mask[1, 40:] = -(2**30)
    p = softmax(x, softmax_params(torch.tensor(1e-3)), mask, backend="torch")
    assert (p[1, :, 40:] == 0).all()
    total = p.long().sum(-1)  # each output rounded: the sum is 256 +- half the number of keys
    assert ((total - 256).abs() <= 64 / 2).all()


def test_softmax_float_error_on_attention_scores():
    """Realistic attention scores (std ~3 logits, 128 keys): max error within one output step (1/256)."""
    s = 3e-4
    scores = (torch.randn(8, 128, 128, generator=torch.Generator().manual_seed(0)) * 3 / s).round().int()
    p = softmax(scores, softmax_params(torch.tensor(s)), backend="torch").double() / 256
    ref = torch.softmax(scores.double() * s, -1)
    assert (p - ref).abs().max() <= 1.0 / 256


# ---------------------------------------------------------------- i-LayerNorm
def ln_params(n, s_in=1e-3, s_out=0.05, eps=1e-12, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, generator=g) * 0.5 + 1
    bias = torch.randn(n, generator=g) * 0.3
    return weight, bias, layernorm_params(torch.tensor(s_in), weight, bias, eps, torch.tensor(s_out))


@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (3, 768), (2, 3, 1023)])
def test_layernorm_exact(shape):
    x = randint(-(2**21), 2**21, shape, torch.int32)
    _, _, params = ln_params(shape[-1])
    a, b = both(layernorm, x, *params)
    assert torch.equal(a, b)
    bound = max_input(shape[-1])
    x.view(-1, shape[-1])[0] = bound - 1
    x.view(-1, shape[-1])[-1, ::2] = 1 - bound
    a, b = both(layernorm, x, *params)
    assert torch.equal(a, b)


def layernorm_exact_ints(row: list[int], eps_int: int, m: list[int], e: list[int], beta: list[int], bits: int) -> list[int]:
    """i-LayerNorm of one row in Python's unbounded integers: what the int64 kernels must equal."""
    n, total = len(row), sum(row)
    y = [v * n - total for v in row]
    sh = max(max(abs(v) for v in y).bit_length() - 15, -14)
    ys = [v >> sh if sh >= 0 else v << -sh for v in y]
    var = sum(v * v for v in ys) // n
    eps_row = eps_int >> min(2 * sh, 62) if sh >= 0 else min(eps_int, 2**61 >> -2 * sh) << -2 * sh
    std = max(math.isqrt(max(var + eps_row, 1)), 1)
    norm = [(v * ((1 << 30) // std)) >> (sh + 14) for v in y]
    q = 2 ** (bits - 1) - 1
    return [max(-q, min(q, (t * mi + bi + (1 << ei >> 1)) >> ei)) for t, mi, ei, bi in zip(norm, m, e, beta)]


@pytest.mark.parametrize("n", [768, 4096, 65535])
def test_layernorm_is_exact_at_the_edge_of_its_domain(n):
    """One outlier at the bound (the row that needs the widest product), and a row of alternating extremes: the
    kernels equal the unbounded-integer evaluation. Past the bound the op refuses."""
    bound = max_input(n)
    x = randint(-1000, 1000, (2, n), torch.int32)
    x[0, 3] = bound - 1
    x[1, ::2], x[1, 1::2] = bound - 1, 1 - bound
    eps_int, m, e, beta = ln_params(n)[2]
    expected = torch.tensor([layernorm_exact_ints(r, int(eps_int), m.tolist(), e.tolist(), beta.tolist(), 8)
                             for r in x.tolist()], dtype=torch.int8)
    assert torch.equal(layernorm(x, eps_int, m, e, beta, backend="torch"), expected)
    if n <= 4096:  # the interpreter is slow on 64k-wide rows
        assert torch.equal(both(layernorm, x, eps_int, m, e, beta)[0], expected)
    x[0, 3] = bound
    with pytest.raises(RuntimeError, match="must be below"):
        layernorm(x, eps_int, m, e, beta, backend="torch")


def test_layernorm_constant_row_gives_beta():
    x = torch.full((3, 64), 12345, dtype=torch.int32)
    _, _, params = ln_params(64)
    for eps in (0.0, 1e-12, 1e-5):
        p = layernorm_params(torch.tensor(1e-3), torch.ones(64), torch.linspace(-1, 1, 64), eps, torch.tensor(0.05))
        a, b = both(layernorm, x, *p)
        assert torch.equal(a, b)
        assert torch.equal(b[0].long(), torch.round(torch.linspace(-1, 1, 64).double() / 0.05).long())


def test_layernorm_honours_eps():
    x = randint(-3, 3, (4, 256), torch.int32)
    s_in, eps = 1e-3, 1e-4  # eps dominates the variance (~4e-6)
    p = layernorm_params(torch.tensor(s_in), torch.ones(256), torch.zeros(256), eps, torch.tensor(0.01))
    y = layernorm(x, *p, backend="torch").double() * 0.01
    ref = torch.nn.functional.layer_norm(x.double() * s_in, (256,), eps=eps)
    assert (y - ref).abs().max() <= 0.011


def test_layernorm_float_error_on_residual_sums():
    """22-bit residual sums with outlier channels: error within 0.6 output steps (rounding is 0.5)."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(16, 768, generator=g, dtype=torch.float64)
    h[:, 5] *= 40
    s_in = h.abs().max().item() / (2**21 - 1)
    x = (h / s_in).round().int()
    weight, bias, _ = ln_params(768)
    ref = torch.nn.functional.layer_norm(x.double() * s_in, (768,), weight.double(), bias.double(), 1e-12)
    s_out = ref.abs().max().item() / 127
    p = layernorm_params(torch.tensor(s_in), weight, bias, 1e-12, torch.tensor(s_out))
    y = layernorm(x, *p, backend="torch").double() * s_out
    assert (y - ref).abs().max() <= 0.6 * s_out


def test_isqrt_exact():
    n = torch.cat([torch.randint(0, 2**62, (5000,)), torch.randint(0, 2**20, (5000,)),
                   torch.tensor([0, 1, 2, 3, 4, 2**62 - 1, (2**31 - 1) ** 2, (2**31 - 1) ** 2 - 1])])
    r = isqrt_reference(n)
    assert r.tolist() == [max(1, math.isqrt(v)) for v in n.tolist()]


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    a = torch.zeros(4, 8, dtype=torch.int8)
    with pytest.raises(TypeError, match="dtype"):
        int8_matmul(a.float(), a)
    with pytest.raises(ValueError, match="inner dimensions"):
        int8_matmul(a, torch.zeros(4, 9, dtype=torch.int8))
    with pytest.raises(ValueError, match="dimensions"):
        int8_matmul(a[0], a)
    with pytest.raises(ValueError, match="one per output channel"):
        int8_matmul(a, a, torch.zeros(5, dtype=torch.int32))
    with pytest.raises(ValueError, match="bit width"):
        m, e = dyadic(torch.tensor([0.1]))
        int8_matmul(a, a, None, m, e, bits=40)
    with pytest.raises(ValueError, match="backend"):
        int8_matmul(a, a, backend="cuda")
    with pytest.raises(ValueError, match="both m and e"):
        int8_matmul(a, a, None, torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError, match="1 or 4 elements"):
        m, e = dyadic(torch.rand(3))
        requantize(torch.zeros(2, 4, dtype=torch.int32), m, e)
    with pytest.raises(ValueError, match="mask must be"):
        softmax(torch.zeros(2, 3, 4, dtype=torch.int32), softmax_params(torch.tensor(0.01)),
                torch.zeros(2, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="input scale"):
        softmax_params(torch.tensor(10.0))
    with pytest.raises(TypeError, match="dtype"):
        layernorm(torch.zeros(2, 4, dtype=torch.int64), *layernorm_params(
            torch.tensor(1.0), torch.ones(4), torch.zeros(4), 1e-5, torch.tensor(1.0)))
    with pytest.raises(ValueError, match="params must be"):
        gelu(torch.zeros(2, 4, dtype=torch.int32), torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="per tensor"):
        m, e = dyadic(torch.tensor([0.1]))
        kernels.int8_matmul_gelu(a, a, None, m, e, gelu_params(torch.rand(4))[0], m, e)
    with pytest.raises(ValueError, match="1 or 4 elements"):  # the i-GELU output's multiplier: per tensor or channel
        m3, e3 = dyadic(torch.rand(3))
        kernels.int8_matmul_gelu(a, a, None, m, e, gelu_params(torch.tensor(1e-3))[0], m3, e3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices")
def test_mixed_devices_raise():
    a = torch.zeros(4, 8, dtype=torch.int8)
    with pytest.raises(ValueError, match="different devices"):
        int8_matmul(a, a.cuda())


def test_public_api():
    assert set(kernels.__all__) >= {"int8_matmul", "int8_bmm", "requantize", "dyadic", "gelu", "softmax", "layernorm"}


# ---------------------------------------------------------------- compiled torch backend, GPU
@pytest.mark.slow
def test_compiled_torch_backend_is_identical():
    """`set_compile(True)` only fuses the references: results are the same integers."""
    x = randint(-(2**21), 2**21, (5, 96), torch.int32)
    a = randint(-128, 127, (9, 64), torch.int8)
    w = randint(-128, 127, (96, 64), torch.int8)
    m, e = dyadic(torch.rand(96, dtype=torch.float64) * 1e-3)
    gp, gs = gelu_params(torch.tensor(3e-4))
    m2, e2 = dyadic(gs.double() / 0.02)
    sc = randint(-20000, 20000, (2, 3, 4, 40), torch.int32)
    _, _, lp = ln_params(96)
    calls = [
        lambda: requantize(x, m, e, 8, backend="torch"),
        lambda: int8_matmul(a, w, None, m, e, 8, backend="torch"),
        lambda: kernels.int8_matmul_gelu(a, w, None, m, e, gp, m2, e2, backend="torch"),
        lambda: softmax(sc, softmax_params(torch.tensor(1e-3)), backend="torch"),
        lambda: layernorm(x, *lp, backend="torch"),
    ]
    eager = [f() for f in calls]
    kernels.set_compile(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # the compiled graphs themselves agree, no fallback
            assert all(torch.equal(f(), ref) for f, ref in zip(calls, eager))
    finally:
        kernels.set_compile(False)


def test_a_compiled_graph_that_disagrees_with_eager_falls_back(monkeypatch):
    """maybe_compiled checks the compiled twin's first result against eager and keeps eager when they differ."""
    from kernels import _utils

    monkeypatch.setattr(_utils.torch, "compile", lambda fn, **kw: lambda *a, **k: fn(*a, **k) + 1)
    twice = _utils.maybe_compiled(lambda x: 2 * x)
    x = torch.arange(6)
    kernels.set_compile(True)
    try:
        with pytest.warns(RuntimeWarning, match="other results than eager"):
            assert torch.equal(twice(x), 2 * x)
        assert torch.equal(twice(x), 2 * x)  # eager from then on
    finally:
        kernels.set_compile(False)


@pytest.mark.gpu
@pytest.mark.parametrize("M,K,N", [(1, 64, 8), (1024, 768, 3072), (4096, 3072, 768)])
def test_triton_on_gpu_equals_reference(M, K, N):
    a = randint(-128, 127, (M, K), torch.int8).cuda()
    b = randint(-128, 127, (N, K), torch.int8).cuda()
    bias = randint(-(2**16), 2**16, (N,), torch.int32).cuda()
    m, e = dyadic(torch.rand(N, dtype=torch.float64, device="cuda") * 1e-4)
    x, y = both(int8_matmul, a, b, bias, m, e, 8)
    assert torch.equal(x, y)


@pytest.mark.parametrize("M,K,N", [(1, 3, 5), (16, 8, 8), (17, 64, 7), (2, 100, 33)])
def test_padded_int_mm_for_cuda_shapes_is_exact(M, K, N):
    """The shapes CUDA's `_int_mm` rejects run zero-padded (checked here on the CPU, where it runs too)."""
    from kernels.gemm import _padded_int_mm

    a, b = randint(-128, 127, (M, K), torch.int8), randint(-128, 127, (K, N), torch.int8, seed=1)
    expected = a.long() @ b.long()
    assert torch.equal(_padded_int_mm(a, b).long(), expected)
    out = torch.empty(M, N, dtype=torch.int32)
    assert _padded_int_mm(a, b.t().contiguous().t(), out) is out and torch.equal(out.long(), expected)


def test_missing_cpu_features_warn_once_naming_them(monkeypatch):
    from kernels import _cpu

    monkeypatch.setattr(_cpu, "_cpu_flags", lambda: {"sse4_2", "avx"})
    _cpu.cpp_extension.cache_clear()
    try:
        with pytest.warns(UserWarning, match="need AVX2 at least; this CPU lacks avx2: the integer ops run the torch"):
            assert _cpu.cpp_extension() is None
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _cpu.cpp_extension() is None  # once a process
    finally:
        _cpu.cpp_extension.cache_clear()


@pytest.mark.parametrize("shape", [(5, 0, 3), (3, 1, 4), (7, 1023, 9), (7, 1024, 9), (4, 1025, 6), (2, 3072, 5),
                                   (3, 4, 8, 130, 6)])
def test_int_mm_in_float32_chunks_is_exact(shape):
    """The float32 route (CPUs without an int8 dot product) equals exact integer products, at the extremes too:
    all -128 takes a chunk's sum to 2^24, the last float32-exact integer; all 127 gives odd sums, which float32
    would round past 2^24 (K = 3072 without chunks)."""
    from kernels.gemm import _int_mm_fp32

    *batch, M, K, N = shape
    a = randint(-128, 127, (*batch, M, K), torch.int8)
    b = randint(-128, 127, (*batch, K, N), torch.int8, seed=1)
    for x, y in ((a, b), (torch.full_like(a, -128), torch.full_like(b, -128)),
                 (torch.full_like(a, 127), torch.full_like(b, 127))):
        expected = (x.long() @ y.long()).int() if K else torch.zeros(*batch, M, N, dtype=torch.int32)
        got = _int_mm_fp32(x, y)
        assert got.dtype == torch.int32 and torch.equal(got, expected)


@pytest.mark.parametrize("route", ["int8", "fp32"])
def test_cpu_gemm_routes_give_the_same_integers(route, gemm_route):
    """IBERT_CPU_GEMM forces a route; the public ops give the same results on both (uint8 P V included)."""
    from kernels._cpu import cpu_gemm_route

    gemm_route(route)
    assert cpu_gemm_route() == route
    a, b = randint(-128, 127, (33, 96), torch.int8), randint(-128, 127, (40, 96), torch.int8, seed=1)
    assert torch.equal(int8_matmul(a, b, backend="torch"), (a.long() @ b.long().T).int())
    p, v = randint(0, 255, (3, 17, 24), torch.uint8), randint(-128, 127, (3, 8, 24), torch.int8, seed=2)
    assert torch.equal(int8_bmm(p, v, backend="torch"), (p.long() @ v.long().transpose(1, 2)).int())


@pytest.mark.parametrize("route", ["int8", "fp32"])
def test_packed_weights_give_the_bare_weights_integers(route, gemm_route):
    """`pack_weight` holds the layout of this host's kernel (float32 b.T on the fp32 route; the C++ panels where
    they run; none on the int8 route); the linear ops read it and give the same integers. A weight changed in
    place after packing is refused."""
    from kernels._cpu import cpp_available

    gemm_route(route)
    a, b = randint(-128, 127, (33, 1100), torch.int8), randint(-128, 127, (40, 1100), torch.int8, seed=1)
    packed = kernels.pack_weight(b)
    layout = torch.uint8 if cpp_available() else torch.float32 if route == "fp32" else None
    assert (packed.packed.dtype if packed.packed is not None else None) == layout
    m, e = kernels.dyadic(torch.rand(40, dtype=torch.float64) * 1e-4)
    for args in ((), (None, m, e, 8)):
        assert torch.equal(int8_matmul(a, packed, *args), int8_matmul(a, b, *args, backend="torch"))
    params, out_scale = gelu_params(torch.tensor(3e-3))
    gelu_args = (None, m, e, params, *kernels.dyadic(out_scale.double() / 0.05))
    assert torch.equal(kernels.int8_matmul_gelu(a, packed, *gelu_args),
                       kernels.int8_matmul_gelu(a, b, *gelu_args, backend="torch"))
    b[0, 0] += 1
    with pytest.raises(ValueError, match="changed in place after packing"):
        int8_matmul(a, packed)


def test_cpu_gemm_route_rejects_an_unknown_value(gemm_route):
    from kernels._cpu import cpu_gemm_route

    gemm_route("int4")
    with pytest.raises(ValueError, match="IBERT_CPU_GEMM must be one of"):
        cpu_gemm_route()


def test_cpu_isa_names_what_the_integer_ops_run_on(gemm_route, monkeypatch):
    """The C++ kernels take the best instruction set of the CPU (by its flags): AMX-INT8, else AVX-512 VNNI, else
    AVX2."""
    from kernels._cpu import _cpu_flags, cpp_extension

    monkeypatch.delenv("IBERT_CPU_ISA", raising=False)
    gemm_route("fp32")
    if cpp_extension() is None:
        assert kernels.cpu_isa() == "torch-fp32"
    else:
        flags = _cpu_flags()
        best = ("amx_int8" if {"amx_tile", "amx_int8"} <= flags else "avx512_vnni" if "avx512_vnni" in flags
                else "avx2")
        assert kernels.cpu_isa() == f"cpp-{best}"
        order = ["amx_int8", "avx512_vnni", "avx2", "none"]
        assert cpp_extension().isas() == order[order.index(best):]


@pytest.mark.cpp
def test_cpu_isa_can_be_forced_for_ab_runs(monkeypatch, gemm_route):
    """IBERT_CPU_ISA picks the C++ kernels' instruction set (one this CPU has) or none; the ops follow it."""
    from kernels._cpu import _cpu_flags, cpp_available

    gemm_route("fp32")
    monkeypatch.setenv("IBERT_CPU_ISA", "avx2")
    assert kernels.cpu_isa() == "cpp-avx2" and cpp_available()
    monkeypatch.setenv("IBERT_CPU_ISA", "none")
    assert kernels.cpu_isa() == "torch-fp32" and not cpp_available()
    monkeypatch.setenv("IBERT_CPU_ISA", "avx3")
    with pytest.raises(ValueError, match="IBERT_CPU_ISA must be amx_int8, avx512_vnni, avx2 or none, got 'avx3'"):
        kernels.cpu_isa()
    for isa, flag in (("avx512_vnni", "avx512_vnni"), ("amx_int8", "amx_int8")):
        if flag not in _cpu_flags():
            monkeypatch.setenv("IBERT_CPU_ISA", isa)
            with pytest.raises(RuntimeError, match=f"IBERT_CPU_ISA={isa}: this CPU lacks"):
                kernels.cpu_isa()
