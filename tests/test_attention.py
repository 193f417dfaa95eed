"""The integer attention core: the fused C++ CPU kernel (on each instruction set this CPU has: cpp_isa) and the
Triton composition equal the torch reference."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import on_cpu, on_device
from kernels import attention, dyadic, softmax_params
from kernels.attention import MAX_FUSED_S


SHAPES = [(1, 1, 1, 4), (2, 7, 2, 8), (2, 33, 3, 12), (3, 70, 2, 32), (2, 128, 12, 64), (1, 200, 1, 80)]


def inputs(B, S, heads, d, seed=0, scale=4e-3, low=-127):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randint(low, 128, (B, S, 3 * heads * d), generator=g, dtype=torch.int64).to(torch.int8)
    m, e = dyadic(torch.tensor([5e-3], dtype=torch.float64))
    mask = torch.zeros(B, S, dtype=torch.int32)
    mask[0, S // 2 + 1:] = -(2**30)  # batch 0 sees its first half only
    return qkv, softmax_params(torch.tensor(scale)), m, e, mask


def run(backend, qkv, heads, params, m, e, mask=None, head_mask=None, **kw):
    """attention(...) on CPU tensors in, CPU tensors out; Triton runs on the test device."""
    args = (qkv, heads, params, m, e, mask, head_mask)
    if backend == "triton":
        return on_cpu(attention(*on_device(args), return_probs=True, backend=backend, **kw))
    return attention(*args, return_probs=True, backend=backend, **kw)


@pytest.mark.cpp
@pytest.mark.parametrize("B,S,heads,d", SHAPES)
@pytest.mark.parametrize("low", [-128, -127])  # -128 in q takes the AVX2 kernel's scalar Q K^T
def test_cpp_equals_reference(B, S, heads, d, low, cpp_isa):
    qkv, params, m, e, mask = inputs(B, S, heads, d, low=low)
    head_mask = torch.ones(heads, dtype=torch.uint8)
    head_mask[-1] = 0
    for args in ((None, None), (mask, None), (mask, head_mask)):
        ctx, probs = run("cpp", qkv, heads, params, m, e, *args)
        ref_ctx, ref_probs = run("torch", qkv, heads, params, m, e, *args)
        assert ctx.dtype == torch.int8 and ctx.shape == (B, S, heads * d)
        assert torch.equal(ctx, ref_ctx) and torch.equal(probs, ref_probs)
        if args[1] is None:  # a comparison of zeros would prove nothing
            assert ctx.abs().max() > 10 and probs.max() > 0


@pytest.mark.cpp
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(1, 3), S=st.sampled_from([1, 2, 5, 15, 16, 17, 33, 64, 65, 129]), heads=st.integers(1, 4),
       d=st.sampled_from([1, 3, 4, 7, 8, 20, 32, 33, 64, 65, 128]), value=st.sampled_from([1, 20, 127]),
       log_scale=st.floats(-7, -1.2), log_ratio=st.floats(-6, 0), masked=st.floats(0, 1),
       head_mask=st.booleans(), softmax_bits=st.sampled_from([4, 7, 8]), bits=st.sampled_from([6, 8]),
       seed=st.integers(0, 2**16))
def test_cpp_equals_reference_on_random_cases(B, S, heads, d, value, log_scale, log_ratio, masked, head_mask,
                                              softmax_bits, bits, seed, cpp_isa):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randint(-value, value + 1, (B, S, 3 * heads * d), generator=g, dtype=torch.int64).to(torch.int8)
    params = softmax_params(torch.tensor(10.0**log_scale))
    m, e = dyadic(torch.tensor([10.0**log_ratio], dtype=torch.float64))
    mask = torch.where(torch.rand(B, S, generator=g) < masked, -(2**30), 0).int()
    hm = (torch.rand(heads, generator=g) < 0.5).to(torch.uint8) if head_mask else None
    args = (qkv, heads, params, m, e, mask, hm, softmax_bits, bits)
    ctx, probs = attention(*args, return_probs=True, backend="cpp")
    ref_ctx, ref_probs = attention(*args, return_probs=True, backend="torch")
    assert torch.equal(ctx, ref_ctx) and torch.equal(probs, ref_probs)


@pytest.mark.cpp
@pytest.mark.parametrize("scale", [1e-6, 3e-4, 0.08])
def test_cpp_extremes_equal_reference(scale, cpp_isa):
    """Saturated inputs (largest scores), every softmax input scale, a fully masked row, a large multiplier."""
    B, S, heads, d = 2, 19, 2, 64
    qkv = torch.full((B, S, 3 * heads * d), 127, dtype=torch.int8)
    qkv[1, ::2] = -127
    qkv[1, 1::3, heads * d:] = 127
    mask = torch.zeros(B, S, dtype=torch.int32)
    mask[0] = -(2**31)  # every key masked: a uniform row
    m, e = dyadic(torch.tensor([0.9], dtype=torch.float64))
    params = softmax_params(torch.tensor(scale))
    for args in ((None, None), (mask, None)):
        ctx, probs = run("cpp", qkv, heads, params, m, e, *args)
        ref_ctx, ref_probs = run("torch", qkv, heads, params, m, e, *args)
        assert torch.equal(ctx, ref_ctx) and torch.equal(probs, ref_probs)
    assert ctx.abs().max() == 127


@pytest.mark.parametrize("B,S,heads,d", [(1, 1, 1, 4), (2, 9, 2, 16), (2, 33, 3, 12), (1, 70, 2, 32)])
def test_triton_fused_equals_reference(B, S, heads, d):
    qkv, params, m, e, mask = inputs(B, S, heads, d, seed=1)
    head_mask = torch.ones(heads, dtype=torch.uint8)
    head_mask[0] = 0
    for args in ((None, None), (mask, head_mask)):
        ctx, probs = run("triton", qkv, heads, params, m, e, *args)
        ref_ctx, ref_probs = run("torch", qkv, heads, params, m, e, *args)
        assert torch.equal(ctx, ref_ctx) and torch.equal(probs, ref_probs)
    ctx, _ = run("triton", qkv, heads, params, m, e, mask, config={"BLOCK_M": 16, "num_warps": 2})
    assert torch.equal(ctx, run("torch", qkv, heads, params, m, e, mask)[0])


@pytest.mark.slow
def test_triton_rows_longer_than_the_fused_kernel_holds():
    """S > MAX_FUSED_S runs the three separate Triton kernels: same integers (7 s in the interpreter)."""
    qkv, params, m, e, mask = inputs(1, MAX_FUSED_S + 8, 2, 8)
    ctx, probs = run("triton", qkv, 2, params, m, e, mask)
    ref_ctx, ref_probs = run("torch", qkv, 2, params, m, e, mask)
    assert torch.equal(ctx, ref_ctx) and torch.equal(probs, ref_probs)


@pytest.mark.parametrize("backend", ["triton", pytest.param("cpp", marks=pytest.mark.cpp)])
def test_fully_masked_rows_of_negative_scores(backend):
    """All keys masked and negative scores: the row maximum sits below -2**30 (an int32 underflow before)."""
    qkv = torch.full((2, 5, 3 * 2 * 48), 20, dtype=torch.int8)
    qkv[..., :96] = -20  # q = -20, k = 20: every score -19200
    qkv[1, 2] = 127
    params = softmax_params(torch.tensor(9e-4))
    m, e = dyadic(torch.tensor([0.01], dtype=torch.float64))
    mask = torch.full((2, 5), -(2**30), dtype=torch.int32)
    ctx, probs = run(backend, qkv, 2, params, m, e, mask)
    ref_ctx, ref_probs = run("torch", qkv, 2, params, m, e, mask)
    assert torch.equal(ctx, ref_ctx) and torch.equal(probs, ref_probs)
    assert (probs.long().sum(-1) >= 256 - 5).all()


def test_triton_extremes_equal_reference():
    qkv = torch.full((2, 19, 3 * 2 * 64), 127, dtype=torch.int8)
    qkv[1, ::2] = -127
    mask = torch.zeros(2, 19, dtype=torch.int32)
    mask[0] = -(2**31)
    m, e = dyadic(torch.tensor([0.9], dtype=torch.float64))
    for scale in (1e-6, 0.08):
        params = softmax_params(torch.tensor(scale))
        ctx, probs = run("triton", qkv, 2, params, m, e, mask)
        ref_ctx, ref_probs = run("torch", qkv, 2, params, m, e, mask)
        assert torch.equal(ctx, ref_ctx) and torch.equal(probs, ref_probs)


@pytest.mark.parametrize("backend", ["torch", "triton", "auto"])
def test_empty_batch_or_sequence(backend):
    _, params, m, e, _ = inputs(1, 1, 2, 8)
    for B, S in ((0, 5), (2, 0)):
        ctx, probs = run(backend, torch.zeros(B, S, 48, dtype=torch.int8), 2, params, m, e)
        assert ctx.shape == (B, S, 16) and probs.shape == (B, 2, S, S)


def test_probs_only_when_asked():
    qkv, params, m, e, mask = inputs(1, 5, 1, 8)
    ctx, probs = attention(qkv, 1, params, m, e, mask)
    assert probs is None and ctx.shape == (1, 5, 8)


@pytest.mark.cpp
def test_cpp_op_compiles_in_one_graph():
    """A registered op: torch.compile traces it whole (fullgraph) and gets the same integers."""
    qkv, params, m, e, mask = inputs(2, 9, 2, 16)
    fn = torch.compile(lambda x: attention(x, 2, params, m, e, mask, backend="auto")[0], fullgraph=True)
    assert torch.equal(fn(qkv), run("torch", qkv, 2, params, m, e, mask)[0])


def test_bad_inputs_raise_clear_errors():
    qkv, params, m, e, mask = inputs(2, 5, 2, 8)
    with pytest.raises(TypeError, match="qkv must have dtype"):
        attention(qkv.int(), 2, params, m, e)
    with pytest.raises(ValueError, match="3 \\* heads"):
        attention(qkv, 5, params, m, e)
    with pytest.raises(ValueError, match="params must have 5"):
        attention(qkv, 2, params[:4], m, e)
    with pytest.raises(ValueError, match="mask must be"):
        attention(qkv, 2, params, m, e, mask[:1])
    with pytest.raises(ValueError, match="head_mask must have one entry per head"):
        attention(qkv, 2, params, m, e, mask, torch.ones(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="bit width"):
        attention(qkv, 2, params, m, e, bits=16)
    with pytest.raises(ValueError, match="backend must be one of"):
        attention(qkv, 2, params, m, e, backend="cuda")
