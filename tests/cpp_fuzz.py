"""Fuzzing of the C++ ops, run by test_cpp_checks in a child process so that a crash fails a test instead of the run:

    python tests/cpp_fuzz.py [--examples N]

Each example takes a valid set of one op's arguments and replaces one of them with something drawn at random: a
tensor of another dtype, rank, length (zeros among them) or stride, extreme values, a number out of range. The call
must return or raise ValueError, TypeError or RuntimeError with a message; where the kernels run, an untouched set
must give the reference's integers. Prints each case before it runs, so that the last line names a crash."""
import argparse
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from test_cpp_checks import (  # noqa: E402
    attention_args, engine_layer, layer_args, layernorm_args, linear_args, ops,
)

from kernels._cpu import cpp_available  # noqa: E402
from kernels.layer import buffer_names  # noqa: E402

LAYER = engine_layer()


def encoder_layer_args():
    """The raw op's arguments for a layer of a small engine, and that layer on the torch backend."""
    args = layer_args(LAYER)
    raw = dict(x=args["x"], mask=args["mask"], head_mask=torch.empty(0, dtype=torch.uint8),
               packed=[w.packed for w in args["weights"]], w=[args["buffers"][n] for n in buffer_names()],
               heads=LAYER.heads, bits=LAYER.bits, ln_bits=LAYER.ln_bits, gelu_input_bits=LAYER.gelu_input_bits,
               softmax_bits=LAYER.softmax_bits, return_probs=False)
    return raw, lambda: LAYER(args["x"], args["mask"], None, backend="torch")


OPS = {"linear": lambda: ops().linear, "attention": lambda: ops().attention, "layernorm": lambda: ops().layernorm,
       "encoder_layer": lambda: lambda **kw: torch.ops.ibert.encoder_layer_cpp(*kw.values())}
BUILDERS = {"linear": lambda: linear_args(), "linear i-GELU": lambda: linear_args(gelu=True),
            "linear residual": lambda: linear_args(residual=torch.int32), "attention": lambda: attention_args(),
            "layernorm": lambda: layernorm_args(), "encoder_layer": encoder_layer_args}
DTYPES = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.float32, torch.bool]
NUMBERS = [-(2**40), -(2**31), -1, 0, 1, 2, 3, 4, 5, 8, 9, 16, 31, 32, 33, 62, 63, 64, 127, 128, 2**15, 2**31 - 1, 2**40]
STATS = {"cases": 0, "raised": 0, "returned": 0, "compared": 0}


@st.composite
def tensor_like(draw, original: torch.Tensor) -> torch.Tensor:
    """A tensor like `original` in all but one respect, or nothing like it."""
    kind = draw(st.sampled_from(["dtype", "shape", "empty", "strides", "extremes", "anything"]))
    dtype, shape = original.dtype, list(original.shape)
    if kind == "dtype":
        dtype = draw(st.sampled_from([d for d in DTYPES if d != original.dtype]))
    elif kind == "shape":
        shape = draw(st.lists(st.integers(0, 7), min_size=0, max_size=4))
    elif kind == "empty":
        shape = [0] * max(1, len(shape))
    elif kind == "strides" and original.numel() > 1:
        wide = torch.zeros([*shape[:-1], 2 * max(1, shape[-1] if shape else 1)], dtype=dtype) if shape else None
        if wide is not None:
            return wide[..., ::2]
    elif kind == "anything":
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.lists(st.integers(0, 70), min_size=0, max_size=3))
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    if dtype == torch.bool:
        return torch.zeros(shape, dtype=torch.bool)
    info = torch.iinfo(dtype)
    if kind == "extremes":
        values = torch.tensor([info.min, info.max, 0, -1, 1, 62, 63], dtype=torch.int64).clamp(info.min, info.max)
        return values[torch.randint(0, len(values), shape)].to(dtype)
    lo, hi = max(info.min, -1000), min(info.max, 1000)
    return torch.randint(lo, hi + 1, shape, dtype=torch.int64).to(dtype)


@st.composite
def case(draw):
    op = draw(st.sampled_from(sorted(BUILDERS)))
    args, reference = BUILDERS[op]()
    name = draw(st.sampled_from(["(none)", *args]))
    if name != "(none)":
        value = args[name]
        if isinstance(value, torch.Tensor):
            args[name] = draw(tensor_like(value))
        elif isinstance(value, list):  # one of the layer's buffers or packed weights
            i = draw(st.integers(0, len(value) - 1))
            args[name] = [*value[:i], draw(tensor_like(value[i])), *value[i + 1:]]
        elif isinstance(value, bool):
            args[name] = not value
        else:
            args[name] = draw(st.sampled_from(NUMBERS))
    return op, name, args, reference


def run(op: str, name: str, args: dict, reference) -> None:
    print(f"case: {op}, {name} = {describe(args.get(name))}", flush=True)
    STATS["cases"] += 1
    fn = OPS[op.split()[0]]()
    try:
        out = fn(**args)
    except (ValueError, TypeError, RuntimeError) as err:
        assert str(err).strip(), f"{type(err).__name__} without a message"
        STATS["raised"] += 1
        return
    STATS["returned"] += 1
    assert cpp_available(), "a kernel ran on a CPU without its features"
    if name == "(none)":
        expected = reference()
        if op in ("attention", "encoder_layer"):
            assert torch.equal(out[0], expected[0].reshape(out[0].shape))
            assert op == "encoder_layer" or torch.equal(out[1], expected[1])
        else:
            assert torch.equal(out, expected)
        STATS["compared"] += 1


def describe(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(describe, value)) + "]"
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} {list(value.shape)} strides {list(value.stride())}"
    return repr(value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=200)
    n = parser.parse_args().examples

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case())
    def fuzz(drawn):
        run(*drawn)

    torch.manual_seed(0)
    fuzz()
    print("cases: " + ", ".join(f"{k} {v}" for k, v in STATS.items()))


if __name__ == "__main__":
    main()
