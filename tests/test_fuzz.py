"""Fuzzing the public ops: random shapes (zeros included), dtypes, strides, buffer lengths and extreme values.
Every call either returns what the torch reference returns or raises ValueError/TypeError/RuntimeError with a
message; Triton (through the interpreter on the CPU, on CUDA where there is a GPU) equals the reference wherever
both run. The C++ ops are fuzzed on the hosts that build them, in a subprocess (test_cpp_checks)."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from conftest import on_cpu, on_device

ERRORS = (ValueError, TypeError, RuntimeError)
DTYPES = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.float32]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def tensors(draw, valid: tuple[torch.dtype, ...], dims=(1, 3), max_side=9):
    """A tensor of a drawn shape (sides may be 0), dtype (mostly a `valid` one), values at the edges of the dtype,
    and maybe a stride."""
    shape = draw(st.lists(st.integers(0, max_side), min_size=dims[0], max_size=dims[1]))
    dtype = draw(st.sampled_from(list(valid) * 4 + DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    if dtype.is_floating_point:
        x = torch.randn(shape, generator=g) * 10 ** draw(st.integers(-3, 3))
    else:
        info = torch.iinfo(dtype)
        lo, hi = draw(st.sampled_from([(info.min, info.max), (-3, 3), (0, 1)]))
        x = torch.randint(max(lo, -(2**62)), min(hi, 2**62) + 1, shape, generator=g, dtype=torch.int64).to(dtype)
    if x.dim() >= 2 and draw(st.booleans()):
        x = x.transpose(-1, -2)  # non-contiguous
    return x


def multiplier(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return kernels.dyadic(torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) * 1e-3)


def outcome(fn, *args, **kwargs):
    """The result, or the error (which must be one of ERRORS and say something)."""
    try:
        return fn(*args, **kwargs)
    except ERRORS as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return exc


def agree(fn, *args, triton_too: bool = True, **kwargs):
    """The torch backend's outcome; where it returns and Triton runs too, Triton's result is the same."""
    ref = outcome(fn, *args, backend="torch", **kwargs)
    if triton_too and not isinstance(ref, Exception):
        got = outcome(fn, *on_device(args), backend="triton", **on_device(kwargs))
        if not isinstance(got, Exception):
            for a, b in zip(torch.utils._pytree.tree_leaves(on_cpu(got)), torch.utils._pytree.tree_leaves(ref)):
                assert torch.equal(a, b)
        else:  # Triton may refuse only what the wrapper checks (layout), never fail inside the kernel
            assert isinstance(got, ValueError), got
    return ref


@FUZZ
@given(x=tensors((torch.int32, torch.int64)), bits=st.sampled_from([0, 2, 8, 16, 22, 40]), per_channel=st.booleans(),
       data=st.data())
def test_requantize(x, bits, per_channel, data):
    n = x.shape[-1] if x.dim() and per_channel else 1
    m, e = multiplier(max(n + data.draw(st.sampled_from([0, 0, 1])), 1))
    agree(kernels.requantize, x, m, e, bits)


@FUZZ
@given(a=tensors((torch.int8,), (2, 2), max_side=40), b=tensors((torch.int8,), (2, 2), max_side=40), bias=st.booleans(),
       data=st.data())
def test_int8_matmul(a, b, bias, data):
    n = b.shape[0] if b.dim() == 2 else 1
    bias_t = torch.zeros(n + data.draw(st.sampled_from([0, 0, 1])), dtype=torch.int32) if bias else None
    m, e = multiplier(max(n, 1))
    agree(kernels.int8_matmul, a, b, bias_t)
    agree(kernels.int8_matmul, a, b, bias_t, m, e, 8)


@FUZZ
@given(x=tensors((torch.int32,), (2, 4), max_side=12), scale=st.sampled_from([1e-9, 1e-4, 0.08, 0.5, -1.0, float("nan")]),
       masked=st.booleans(), out_bits=st.sampled_from([0, 4, 8, 16, 17]))
def test_softmax(x, scale, masked, out_bits):
    params = outcome(kernels.softmax_params, torch.tensor(scale))
    if isinstance(params, Exception):
        return
    mask = torch.zeros(x.shape[0], x.shape[-1], dtype=torch.int32) if masked and x.dim() >= 2 else None
    agree(kernels.softmax, x, params, mask, out_bits)


@FUZZ
@given(x=tensors((torch.int32,), (1, 3), max_side=40),
       extra=st.sampled_from([0, 0, 1]), bits=st.sampled_from([8, 16, 33]))
def test_layernorm(x, extra, bits):
    n = x.shape[-1] if x.dim() else 1
    params = kernels.layernorm_params(torch.tensor(1e-3), torch.ones(max(n + extra, 1)), torch.zeros(max(n + extra, 1)),
                                      1e-12, torch.tensor(0.05), min(bits, 16))
    agree(kernels.layernorm, x, *params, bits)


@FUZZ
@given(x=tensors((torch.int32,)), scale=st.sampled_from([1e-6, 1e-3, 1.0]), per_channel=st.booleans(),
       requant=st.booleans())
def test_gelu(x, scale, per_channel, requant):
    n = x.shape[-1] if x.dim() and per_channel else 1
    params, s_out = kernels.gelu_params(torch.full((n,), scale))
    m, e = kernels.dyadic(s_out[:1].double() / 0.02) if requant else (None, None)
    agree(kernels.gelu, x, params, m, e)


@FUZZ
@given(B=st.integers(0, 2), S=st.integers(0, 9), heads=st.integers(1, 3), d=st.integers(1, 5),
       width_off=st.sampled_from([0, 0, 1]), dtype=st.sampled_from([torch.int8, torch.int8, torch.int32]),
       head_mask=st.sampled_from([None, "ok", "short", "two"]), seed=st.integers(0, 2**16))
def test_attention(B, S, heads, d, width_off, dtype, head_mask, seed):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randint(-127, 128, (B, S, 3 * heads * d + width_off), generator=g).to(dtype)
    hm = {None: None, "ok": torch.ones(heads, dtype=torch.uint8), "short": torch.ones(heads + 1, dtype=torch.uint8),
          "two": torch.full((heads,), 2, dtype=torch.uint8)}[head_mask]
    m, e = kernels.dyadic(torch.tensor([5e-3], dtype=torch.float64))
    mask = torch.zeros(B, S, dtype=torch.int32)
    agree(kernels.attention, qkv, heads, kernels.softmax_params(torch.tensor(1e-3)), m, e, mask, hm,
          return_probs=True)


@pytest.mark.parametrize("ratio", [float("nan"), float("inf"), -float("inf"), 2.0**40])
def test_dyadic_refuses_what_has_no_multiplier(ratio):
    with pytest.raises(RuntimeError, match="dyadic"):
        kernels.dyadic(torch.tensor([ratio]))
