"""The C++ ops check every argument before they run, then the CPU: bad input is a named error, never a crash.

These run wherever the module builds (any x86-64 CPU with g++): the checks are compiled for the baseline ISA, so on a
CPU without AVX2 valid arguments reach the CPU check and raise it, and bad ones raise their own error first. Where the kernels run, valid arguments give the reference's integers."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import PackedWeight, attention, dyadic, gelu_params, int8_matmul, int8_matmul_gelu, layernorm, softmax_params
from kernels._cpu import cpp_available, cpp_build
from kernels.layer import buffer_names, encoder_layer_cpp
from kernels.layernorm import max_input
from test_cpp import ln_params, randint

pytestmark = pytest.mark.cpp_build
NO_SIMD = "this CPU lacks"


def ops():
    return cpp_build()


def linear_args(M=5, K=8, N=70, gelu=False, residual=None):
    """The raw op's arguments (as kernels.gemm passes them) and the public call that is their reference."""
    a, w = randint(-128, 127, (M, K), torch.int8), randint(-127, 127, (N, K), torch.int8, seed=1)
    bias = randint(-(2**16), 2**16, (N,), torch.int32, seed=2)
    m, e = dyadic(torch.rand(N, dtype=torch.float64) * 2.0**-6)
    none32, none64 = torch.empty(0, dtype=torch.int32), torch.empty(0, dtype=torch.int64)
    args = dict(a=a, packed=ops().pack_weight(w), N=N, bias=bias, m=m, e=e, qmax=127, residual=none32, m_res=none32,
                e_res=none32, gelu=none64, m2=none32, e2=none32, out_bits=8)
    reference = lambda: int8_matmul(a, w, bias, m, e, 8, backend="torch")
    if gelu:
        params, out_scale = gelu_params(torch.tensor(3e-4))
        m2, e2 = dyadic(out_scale.double() / 0.02)
        args.update(qmax=32767, gelu=params.reshape(-1), m2=m2, e2=e2)
        reference = lambda: int8_matmul_gelu(a, w, bias, m, e, params, m2, e2, backend="torch")
    if residual is not None:
        r = randint(-127, 127, (M, N), residual, seed=3)
        mr, er = dyadic(torch.tensor([0.6]))
        args.update(residual=r, m_res=mr, e_res=er)
        reference = lambda: int8_matmul(a, w, bias, m, e, 8, r, mr, er, backend="torch")
    return args, reference


def attention_args(B=2, S=9, heads=2, d=8, masked=True):
    qkv = randint(-127, 127, (B, S, 3 * heads * d), torch.int8)
    params = softmax_params(torch.tensor(0.05))
    m, e = dyadic(torch.tensor([2.0**-8 * 0.3]))
    mask = torch.zeros(B, S, dtype=torch.int32)
    mask[:1, 5:] = -(2**30)
    head_mask = torch.tensor([1, 0], dtype=torch.uint8)
    args = dict(qkv=qkv.reshape(B * S, 3 * heads * d), mask=mask if masked else torch.empty(0, dtype=torch.int32), params=params,
                m_t=m, e_t=e, head_mask=head_mask, batch=B, heads=heads, softmax_bits=8, qmax=127, want_probs=True)
    reference = lambda: attention(qkv, heads, params, m, e, mask if masked else None, head_mask, return_probs=True,
                                  backend="torch")
    return args, reference


def layernorm_args(R=4, N=48):
    x = randint(-(2**21), 2**21, (R, N), torch.int32)
    eps, m, e, beta = ln_params(N)
    args = dict(x=x, eps_t=eps.reshape(-1), m_t=m, e_t=e, beta_t=beta, out_bits=8)
    return args, lambda: layernorm(x, eps, m, e, beta, 8, backend="torch")


def engine_layer():
    from test_model import calibrated

    from ibert.engine import convert_to_integer

    return convert_to_integer(calibrated("IBertModel")).layers[0]


def layer_args(layer, B=2, S=5):
    x = randint(-127, 127, (B, S, 32), torch.int8)
    mask = torch.zeros(B, S, dtype=torch.int32)
    weights = [PackedWeight(w, ops().pack_weight(w), w._version)  # the C++ panels, even where the kernels can't run
               for w in (layer.qkv.weight, layer.attn_dense.weight, layer.ffn_in.weight, layer.ffn_out.weight)]
    return dict(x=x, mask=mask, head_mask=None, weights=weights, buffers=layer.cpp_buffers(), heads=layer.heads,
                bits=layer.bits, ln_bits=layer.ln_bits, gelu_input_bits=layer.gelu_input_bits,
                softmax_bits=layer.softmax_bits)


def call_or_cpu_error(fn, **kwargs):
    """fn's result where the kernels run; where they don't, the CPU check's error (every other check passed)."""
    if cpp_available():
        return fn(**kwargs)
    with pytest.raises(RuntimeError, match=NO_SIMD):
        fn(**kwargs)
    return None


@pytest.mark.parametrize("case", ["plain", "gelu", "residual8", "residual32"])
def test_valid_linear_arguments_pass_every_check(case):
    args, reference = linear_args(gelu=case == "gelu",
                                  residual={"residual8": torch.int8, "residual32": torch.int32}.get(case))
    out = call_or_cpu_error(ops().linear, **args)
    assert out is None or torch.equal(out, reference())


@pytest.mark.parametrize("masked", [True, False])
def test_valid_attention_arguments_pass_every_check(masked):
    args, reference = attention_args(masked=masked)
    out = call_or_cpu_error(ops().attention, **args)
    if out is not None:
        ctx, probs = reference()
        assert torch.equal(out[0], ctx.reshape(out[0].shape)) and torch.equal(out[1], probs)


def test_valid_layernorm_arguments_pass_every_check():
    args, reference = layernorm_args()
    out = call_or_cpu_error(ops().layernorm, **args)
    assert out is None or torch.equal(out, reference())


def test_an_engine_layer_passes_every_check_of_the_fused_layer():
    layer = engine_layer()
    args = layer_args(layer)
    out = call_or_cpu_error(encoder_layer_cpp, **args)
    if out is not None:
        y, _ = layer(args["x"], args["mask"], None, backend="torch")
        assert torch.equal(out[0], y)


def test_empty_batches_are_empty_results():
    """A batch of 0 rows or sequences returns empty tensors (it divided by zero before)."""
    args, _ = attention_args(B=0)
    out = call_or_cpu_error(ops().attention, **{**args, "mask": torch.empty(0, dtype=torch.int32)})
    assert out is None or (out[0].shape == (0, 16) and out[1].shape == (0, 2, 0, 0))  # no rows: S unknown, 0
    args, _ = linear_args(M=0)
    out = call_or_cpu_error(ops().linear, **args)
    assert out is None or out.shape == (0, 70)


def replaced(args, **changes):
    return {**args, **changes}


LINEAR_CASES = {
    "a dtype": (lambda a: replaced(a, a=a["a"].int()), TypeError, "linear: a must be int8, got int32"),
    "a dims": (lambda a: replaced(a, a=a["a"][None]), ValueError, "a must have 2 dimensions"),
    "a strides": (lambda a: replaced(a, a=a["a"].t().contiguous().t()), ValueError, "a must be contiguous"),
    "K not a multiple of 4": (lambda a: replaced(a, a=a["a"][:, :6].contiguous()), ValueError, "multiple of 4"),
    "packed for another K": (lambda a: replaced(a, packed=ops().pack_weight(torch.zeros(70, 12, dtype=torch.int8))),
                             ValueError, "packed must be pack_weight's"),
    "N beyond the panels": (lambda a: replaced(a, N=130), ValueError, "packed must be pack_weight's"),
    "N of 0": (lambda a: replaced(a, N=0), ValueError, "packed must be pack_weight's"),
    "bias length": (lambda a: replaced(a, bias=a["bias"][:69]), ValueError, r"bias must have shape \[70\]"),
    "bias dtype": (lambda a: replaced(a, bias=a["bias"].long()), TypeError, "bias must be int32"),
    "m length": (lambda a: replaced(a, m=a["m"][:3]), ValueError, r"\(m, e\) must be two int32 tensors of 1 or 70"),
    "m and e swapped": (lambda a: replaced(a, m=a["e"], e=a["m"]), ValueError, r"shifts must be in \[0, 62\]"),
    "negative shift": (lambda a: replaced(a, e=a["e"] - 100), ValueError, r"shifts must be in \[0, 62\]"),
    "qmax against out_bits": (lambda a: replaced(a, qmax=255), ValueError, "qmax must be 2"),
    "out_bits": (lambda a: replaced(a, out_bits=40), ValueError, r"out_bits must be in \[2, 32\]"),
    "residual shape": (lambda a: replaced(a, residual=torch.zeros(5, 69, dtype=torch.int8),
                                          m_res=a["m"][:1], e_res=a["e"][:1]), ValueError, "residual must have shape"),
    "residual dtype": (lambda a: replaced(a, residual=torch.zeros(5, 70, dtype=torch.int16)), TypeError,
                       "residual must be int8 or int32"),
    "residual without multiplier": (lambda a: replaced(a, residual=torch.zeros(5, 70, dtype=torch.int8)),
                                    ValueError, r"\(m_res, e_res\) must be two int32 tensors of 1 or 70 elements"),
    "gelu length": (lambda a: replaced(a, gelu=torch.zeros(4, dtype=torch.int64)), ValueError,
                    r"gelu must have shape \[5\]"),
    "gelu shift": (lambda a: replaced(a, gelu=torch.tensor([1, 1, 40, 1, 0]), qmax=100, m2=a["m"][:1], e2=a["e"][:1]),
                   ValueError, r"erf shift k \(gelu\[2\]\) must be in \[0, 31\], got 40"),
    "gelu input too wide": (lambda a: replaced(a, gelu=torch.tensor([1, 1, 4, 1, 0]), qmax=2**20, m2=a["m"][:1],
                                               e2=a["e"][:1]), ValueError, "qmax \\(of the i-GELU input\\)"),
}


def test_pack_weight_names_bad_arguments():
    with pytest.raises(TypeError, match="pack_weight: w must be int8, got uint8"):
        ops().pack_weight(torch.zeros(3, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="pack_weight: w must have 2 dimensions"):
        ops().pack_weight(torch.zeros(8, dtype=torch.int8))


ATTENTION_CASES = {
    "qkv dtype": (lambda a: replaced(a, qkv=a["qkv"].int()), TypeError, "attention: qkv must be int8"),
    "batch of 0 with rows": (lambda a: replaced(a, batch=0), ValueError, "rows must be batch"),
    "rows not batch x S": (lambda a: replaced(a, batch=4), ValueError, "18 rows must be batch \\(4\\)"),
    "no heads": (lambda a: replaced(a, heads=0), ValueError, "heads must be in"),
    "width not 3 x heads x d": (lambda a: replaced(a, heads=5), ValueError, "must be 3 \\* heads \\* head_size"),
    "mask shape": (lambda a: replaced(a, mask=a["mask"][:, :4].contiguous()), ValueError, "mask must have shape"),
    "mask dtype": (lambda a: replaced(a, mask=a["mask"].long()), TypeError, "mask must be int32"),
    "params length": (lambda a: replaced(a, params=a["params"][:4]), ValueError, r"params must have shape \[5\]"),
    "params x0 of 0": (lambda a: replaced(a, params=torch.tensor([0, 40, 400, 0, 0])), ValueError, "ln2 step x0"),
    "params shift": (lambda a: replaced(a, params=torch.tensor([-100, 40, 400, 40, 0])), ValueError, "exp shift"),
    "multiplier per channel": (lambda a: replaced(a, m_t=a["m_t"].repeat(2), e_t=a["e_t"].repeat(2)), ValueError,
                               "of 1 element"),
    "head_mask of 2": (lambda a: replaced(a, head_mask=torch.tensor([2, 1], dtype=torch.uint8)), ValueError,
                       "zeros and ones"),
    "head_mask length": (lambda a: replaced(a, head_mask=torch.ones(3, dtype=torch.uint8)), ValueError,
                         r"head_mask must have shape \[2\]"),
    "softmax_bits": (lambda a: replaced(a, softmax_bits=9), ValueError, "softmax_bits must be in"),
    "qmax": (lambda a: replaced(a, qmax=128), ValueError, r"qmax must be in \[1, 127\]"),
    "sequence of 65536": (lambda a: replaced(a, qkv=torch.zeros(65536, 6, dtype=torch.int8), batch=1, heads=1,
                                             mask=torch.empty(0, dtype=torch.int32),
                                             head_mask=torch.empty(0, dtype=torch.uint8)),
                          ValueError, "sequence length"),
}


LAYERNORM_CASES = {
    "x dtype": (lambda a: replaced(a, x=a["x"].long()), TypeError, "layernorm: x must be int32"),
    "x dims": (lambda a: replaced(a, x=a["x"][None]), ValueError, "x must have 2 dimensions"),
    "rows of 65536": (lambda a: replaced(a, x=torch.zeros(1, 65536, dtype=torch.int32)), ValueError, "row length"),
    "m per tensor": (lambda a: replaced(a, m_t=a["m_t"][:1], e_t=a["e_t"][:1]), ValueError,
                     "one element per channel"),
    "beta length": (lambda a: replaced(a, beta_t=a["beta_t"][:5]), ValueError, r"beta must have shape \[48\]"),
    "beta dtype": (lambda a: replaced(a, beta_t=a["beta_t"].int()), TypeError, "beta must be int64"),
    "eps shape": (lambda a: replaced(a, eps_t=a["eps_t"].repeat(2)), ValueError, r"eps must have shape \[1\]"),
    "negative eps": (lambda a: replaced(a, eps_t=-a["eps_t"] - 1), ValueError, "eps must be in"),
    "out_bits": (lambda a: replaced(a, out_bits=1), ValueError, "out_bits must be in"),
}


BAD_ARGUMENTS = {"linear": (LINEAR_CASES, linear_args), "attention": (ATTENTION_CASES, attention_args),
                 "layernorm": (LAYERNORM_CASES, layernorm_args)}


@pytest.mark.parametrize("op,case", [(op, case) for op, (cases, _) in BAD_ARGUMENTS.items() for case in cases],
                         ids=lambda v: v)
def test_ops_name_bad_arguments(op, case):
    cases, build = BAD_ARGUMENTS[op]
    mutate, error, message = cases[case]
    args, _ = build()
    with pytest.raises(error, match=message):
        getattr(ops(), op)(**mutate(args))


@pytest.mark.cpp
def test_layernorm_input_beyond_its_exact_domain_is_refused(cpp_isa):
    args, _ = layernorm_args(N=4096)
    args["x"][2, 7] = max_input(4096)
    with pytest.raises(ValueError, match="layernorm: \\|x\\| must be below 67108864 for rows of 4096"):
        ops().layernorm(**args)


def test_the_fused_layer_takes_its_buffers_by_name():
    layer = engine_layer()
    args = layer_args(layer)
    assert set(args["buffers"]) == set(buffer_names()) and len(buffer_names()) == 30
    missing = {k: v for k, v in args["buffers"].items() if k != "ffn_in.e"}
    with pytest.raises(ValueError, match=r"missing \['ffn_in.e'\], unknown \[\]"):
        encoder_layer_cpp(**replaced(args, buffers=missing))
    with pytest.raises(ValueError, match=r"unknown \['ffn_in.scale'\]"):
        encoder_layer_cpp(**replaced(args, buffers={**args["buffers"], "ffn_in.scale": torch.ones(1)}))


LAYER_CASES = {
    "a shift and its multiplier swapped": (
        lambda b: {**b, "ffn_in.m": b["ffn_in.e"], "ffn_in.e": b["ffn_in.m"]}, ValueError,
        r"encoder_layer: ffn_in.m, ffn_in.e: shifts must be in \[0, 62\]"),
    "a per-tensor buffer per channel": (
        lambda b: {**b, "context.m": b["qkv.m"], "context.e": b["qkv.e"]}, ValueError,
        r"encoder_layer: context.m, context.e must be two int32 tensors of 1 element, got 96 and 96"),
    "a LayerNorm's beta of the wrong dtype": (
        lambda b: {**b, "ffn_layernorm.beta": b["ffn_layernorm.beta"].int()}, TypeError,
        r"encoder_layer: ffn_layernorm.beta must be int64"),
    "softmax params from elsewhere": (
        lambda b: {**b, "softmax.params": b["gelu.params"]}, ValueError,
        r"encoder_layer: the softmax ln2 step x0 \(softmax.params\[0\]\) must be in"),
    "a weight of another layer": (None, ValueError, r"encoder_layer: ffn_out's packed weight must be pack_weight's"),
}


@pytest.mark.parametrize("case", LAYER_CASES, ids=str)
def test_the_fused_layer_names_the_buffer_at_fault(case):
    mutate, error, message = LAYER_CASES[case]
    layer = engine_layer()
    args = layer_args(layer)
    if mutate is None:  # the FFN's input weight [I, H] in place of its output's [H, I]
        args = replaced(args, weights=args["weights"][:3] + args["weights"][2:3])
    else:
        args = replaced(args, buffers=mutate(args["buffers"]))
    with pytest.raises(error, match=message):
        encoder_layer_cpp(**args)


def test_the_fused_layer_checks_its_own_arguments():
    layer = engine_layer()
    args = layer_args(layer)
    raw = dict(x=args["x"], mask=args["mask"], head_mask=torch.empty(0, dtype=torch.uint8),
               packed=[w.packed for w in args["weights"]],
               w=[args["buffers"][n] for n in buffer_names()], heads=4, bits=8, ln_bits=22, gelu_input_bits=16,
               softmax_bits=8, return_probs=False)
    op = torch.ops.ibert.encoder_layer_cpp
    with pytest.raises(ValueError, match="expected 4 weights and 30 buffers"):
        op(*replaced(raw, w=raw["w"][:29]).values())
    with pytest.raises(TypeError, match="encoder_layer: x must be int8"):
        op(*replaced(raw, x=raw["x"].int()).values())
    with pytest.raises(ValueError, match=r"ln_bits must be in \[2, 32\]"):
        op(*replaced(raw, ln_bits=33).values())
    with pytest.raises(ValueError, match="bits must be in"):
        op(*replaced(raw, bits=9).values())


def test_fuzzed_arguments_raise_or_agree_never_crash():
    """Random shapes (zeros among them), dtypes, strides, lengths and extreme values for every C++ op, in a child
    process, so that a crash fails this test instead of killing the run."""
    worker = Path(__file__).with_name("cpp_fuzz.py")
    run = subprocess.run([sys.executable, str(worker), "--examples", "150"], capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert "cases:" in run.stdout
