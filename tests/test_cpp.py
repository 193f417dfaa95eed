"""The C++ CPU kernels (`kernels/csrc`): the int8 linear layers with fused epilogues and i-LayerNorm equal the torch
reference exactly, on each instruction set this CPU has (cpp_isa); the sources hold no floating-point type. (The
fused attention's tests are in test_attention.py.)"""
import json
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from kernels import dyadic, gelu_params, int8_matmul, int8_matmul_gelu, layernorm, layernorm_params
from kernels.layernorm import max_input
from kernels._cpu import SOURCES
from kernels.tuning import CPU_DEFAULT_BLOCKING, CPU_ROWS
from conftest import force_isa


# Tails of every loop: rows (micro-tiles of 6 or 4, blocks of 16 tiles), channels (vectors of 16 or 8, panels of 64)
# and the inner dimension (groups of 4). Each linear test runs on every instruction set of this CPU (cpp_isa),
# with activations of all int8 and of +-127 (requantized ones: the AVX2 kernel's fast path).
SHAPES = [(1, 1, 1), (5, 7, 17), (6, 4, 64), (13, 130, 129), (97, 768, 200), (200, 33, 65)]


def randint(lo, hi, shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64).to(dtype)


def cpp_and_torch(fn, *args):
    x, y = fn(*args, backend="cpp"), fn(*args, backend="torch")
    assert x.dtype == y.dtype and x.shape == y.shape
    return x, y


@pytest.mark.cpp
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("bits", [8, 16, 22])
@pytest.mark.parametrize("a_low", [-128, -127])
def test_linear_requant_residual_exact(M, K, N, bits, a_low, cpp_isa):
    a = randint(a_low, 127, (M, K), torch.int8, seed=1)
    b = randint(-128, 127, (N, K), torch.int8, seed=2)
    bias = randint(-(2**16), 2**16, (N,), torch.int32, seed=3)
    m, e = dyadic(torch.rand(N, dtype=torch.float64) * 2.0 ** (bits - 14) / math.sqrt(K))
    res = randint(-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1, (M, N), torch.int8 if bits == 8 else torch.int32)
    mr, er = dyadic(torch.tensor([0.6]))
    mrc, erc = dyadic(torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 1.2)
    mt, et = dyadic(torch.tensor([2.0 ** (bits - 15)]))
    for args in ((bias, m, e, bits), (bias, m, e, bits, res, mr, er), (bias, m, e, bits, res, mrc, erc),
                 (None, mt, et, bits), (None, mt, et, bits, res, mr, er)):
        x, y = cpp_and_torch(int8_matmul, a, b, *args)
        assert torch.equal(x, y)


@pytest.mark.cpp
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("reach", [2.0**-2, 2.0**3])  # i-GELU inputs below the erf clip; past it and saturating
@pytest.mark.parametrize("a_low", [-128, -127])
@pytest.mark.parametrize("out_per_channel", [False, True])  # the i-GELU output's multiplier
def test_linear_gelu_exact(M, K, N, reach, a_low, out_per_channel, cpp_isa):
    a = randint(a_low, 127, (M, K), torch.int8, seed=4)
    b = randint(-128, 127, (N, K), torch.int8, seed=5)
    bias = randint(-(2**16), 2**16, (N,), torch.int32, seed=6)
    m, e = dyadic(torch.rand(N, dtype=torch.float64) * reach / math.sqrt(K))
    params, out_scale = gelu_params(torch.tensor(3e-4))
    out_range = torch.rand(N, dtype=torch.float64) * 0.04 + 1e-3 if out_per_channel else torch.tensor([0.02])
    m2, e2 = dyadic(out_scale.double() / out_range)
    for bias_ in (bias, None):
        x, y = cpp_and_torch(int8_matmul_gelu, a, b, bias_, m, e, params, m2, e2)
        assert torch.equal(x, y) and y.dtype == torch.int8
    x, y = cpp_and_torch(int8_matmul_gelu, a, b, bias, m, e, params, m2, e2, 12, 16)  # mid and output widths
    assert torch.equal(x, y) and y.dtype == torch.int32


@pytest.mark.cpp
@pytest.mark.parametrize("a_low", [-128, -127])
def test_linear_extremes_saturate(a_low, cpp_isa):
    """Largest accumulators (every product 128 * 127 or 127 * 128: a_low activations against +-127 weights, +-127
    ones against -128 weights), outputs on both clamps, the largest shift."""
    K = 1024
    a = torch.full((7, K), a_low, dtype=torch.int8)
    a[1] = 127
    a[2] = -127
    b = torch.full((70, K), 127, dtype=torch.int8)
    b[1::2] = -127
    b[2] = -128
    for ratio in (1e-3, 2.0**-40, 1.0):
        m, e = dyadic(torch.tensor([ratio]))
        for bits in (8, 16, 32):
            x, y = cpp_and_torch(int8_matmul, a, b, None, m, e, bits)
            assert torch.equal(x, y)
    m, e = dyadic(torch.tensor([1e-3]))
    x = int8_matmul(a, b, None, m, e, 8, backend="cpp")
    assert x[0, 0] == -127 and x[0, 1] == 127 and x[1, 0] == 127 and x[1, 2] == -127 and x[2, 2] == 127


@pytest.mark.cpp
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(M=st.integers(1, 40), K=st.integers(1, 300), N=st.integers(1, 140), seed=st.integers(0, 2**16),
       log_ratio=st.floats(-30, 0), residual=st.sampled_from([None, torch.int8, torch.int32]), bits=st.integers(2, 32),
       a_low=st.sampled_from([-128, -127]), residual_channels=st.booleans())
def test_linear_property(M, K, N, seed, log_ratio, residual, bits, a_low, residual_channels, cpp_isa):
    a = randint(a_low, 127, (M, K), torch.int8, seed=seed)
    b = randint(-128, 127, (N, K), torch.int8, seed=seed + 1)
    bias = randint(-(2**24), 2**24, (N,), torch.int32, seed=seed + 2)
    g = torch.Generator().manual_seed(seed)
    m, e = dyadic(torch.rand(N, generator=g, dtype=torch.float64) * 2.0**log_ratio)
    args = (bias, m, e, bits)
    if residual is not None:
        top = 127 if residual == torch.int8 else 2**30
        ratio = torch.rand(N if residual_channels else 1, generator=g) * 4
        args += (randint(-top, top, (M, N), residual, seed=seed + 3), *dyadic(ratio))
    x, y = cpp_and_torch(int8_matmul, a, b, *args)
    assert torch.equal(x, y)


def ln_params(n, s_in=1e-3, s_out=0.02, eps=1e-12, bits=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight, bias = 1 + torch.randn(n, generator=g) * 0.2, torch.randn(n, generator=g) * 0.3
    return layernorm_params(torch.tensor(s_in), weight, bias, eps, torch.tensor(s_out), bits)


@pytest.mark.cpp
@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (3, 768), (2, 3, 1023), (40, 384)])
@pytest.mark.parametrize("bits", [8, 16])
def test_layernorm_exact(shape, bits, cpp_isa):
    """Wide rows (down-shifted variance), narrow rows (up-shifted), the extremes of the exact domain, constant rows,
    large eps."""
    x = randint(-(2**21), 2**21, shape, torch.int32)
    params = ln_params(shape[-1], bits=bits)
    for rows in (x, x >> 20, x.clamp(-2, 2)):
        a, b = cpp_and_torch(layernorm, rows.contiguous(), *params, bits)
        assert torch.equal(a, b)
    bound = max_input(shape[-1])
    x.view(-1, shape[-1])[0] = bound - 1
    x.view(-1, shape[-1])[-1, ::2] = 1 - bound
    a, b = cpp_and_torch(layernorm, x, *params, bits)
    assert torch.equal(a, b)
    for eps in (0.0, 1e-5, 10.0):
        p = ln_params(shape[-1], s_in=1e-3, eps=eps, bits=bits)
        a, b = cpp_and_torch(layernorm, x.clamp(-3, 3), *p, bits)
        assert torch.equal(a, b)


@pytest.mark.cpp
def test_packed_weights_equal_bare_ones_in_the_cpp_kernel(cpp_isa):
    a = randint(-128, 127, (9, 37), torch.int8)
    w = randint(-127, 127, (20, 37), torch.int8, seed=1)
    m, e = dyadic(torch.rand(20, dtype=torch.float64) * 1e-2)
    packed = kernels.pack_weight(w)
    assert packed.packed.dtype == torch.uint8 and packed.packed.shape == (1, 10, 64, 4)
    x = int8_matmul(a, packed, None, m, e, backend="cpp")
    assert torch.equal(x, int8_matmul(a, w, None, m, e, backend="cpp"))
    assert torch.equal(x, int8_matmul(a, w, None, m, e, backend="torch"))


@pytest.mark.cpp
@pytest.mark.parametrize("tiles", [1, 2, 16])
@pytest.mark.parametrize("order", ["blocks", "panels"])
def test_every_blocking_is_exact(tiles, order, cpp_isa):
    """Whatever the blocking (rows per micro-tile, tiles per block, order of the work), the same integers, on
    shapes with tails of rows, blocks and panels, with the residual and the i-GELU epilogues."""
    M, K, N = 61, 132, 200
    a = randint(-127, 127, (M, K), torch.int8, seed=1)
    b = kernels.pack_weight(randint(-128, 127, (N, K), torch.int8, seed=2))
    bias = randint(-(2**16), 2**16, (N,), torch.int32, seed=3)
    m, e = dyadic(torch.rand(N, dtype=torch.float64) * 2.0**-6 / math.sqrt(K))
    res, (mr, er) = randint(-127, 127, (M, N), torch.int8, seed=4), dyadic(torch.tensor([0.6]))
    params, s_out = gelu_params(torch.tensor(1e-3))
    mo, eo = dyadic(s_out.double() / 0.02)
    ref = int8_matmul(a, b, bias, m, e, 8, res, mr, er, backend="torch")
    ref_gelu = int8_matmul_gelu(a, b, bias, m, e, params, mo, eo, 16, 8, backend="torch")
    for rows in CPU_ROWS[cpp_isa]:
        cfg = dict(rows=rows, tiles=tiles, order=order)
        assert torch.equal(int8_matmul(a, b, bias, m, e, 8, res, mr, er, backend="cpp", config=cfg), ref), cfg
        assert torch.equal(int8_matmul_gelu(a, b, bias, m, e, params, mo, eo, 16, 8, backend="cpp", config=cfg),
                           ref_gelu), cfg


@pytest.mark.cpp
@pytest.mark.parametrize("cfg,match", [
    (dict(rows=0, tiles=16, order="blocks"), "positive int"),
    (dict(rows=7, tiles=16, order="blocks"), "rows per micro-tile"),
    (dict(rows=2, tiles=16, order="rows"), "bad order"),
    (dict(rows=2, tiles=16), "exactly the keys"),
    (dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=2), "exactly the keys"),
])
def test_bad_blocking_is_a_clear_error(cfg, match, cpp_isa):
    a = randint(-127, 127, (4, 8), torch.int8)
    m, e = dyadic(torch.tensor([1e-2]))
    with pytest.raises(ValueError, match=match):
        int8_matmul(a, a, None, m, e, backend="cpp", config=cfg)


@pytest.fixture
def cpu_tuned_file(tmp_path, monkeypatch):
    """A CPU tuned file (IBERT_CPU_TUNED) that `load_tuned_blockings()` gives the kernels; this CPU's own is
    loaded again afterwards."""
    from kernels._cpu import cpp_ops, load_tuned_blockings

    path = tmp_path / "cpu.json"
    monkeypatch.setenv("IBERT_CPU_TUNED", str(path))
    yield path
    monkeypatch.delenv("IBERT_CPU_TUNED")
    for isa in CPU_ROWS:
        cpp_ops().set_linear_blocking(isa, [])
    load_tuned_blockings(cpp_ops())


@pytest.mark.cpp
def test_tuned_blockings_load_and_take_the_nearest_m(cpu_tuned_file, cpp_isa):
    from kernels._cpu import cpp_ops, linear_blocking, load_tuned_blockings

    rows = CPU_ROWS[cpp_isa]
    small, large = dict(rows=rows[0], tiles=4, order="panels"), dict(rows=rows[-1], tiles=32, order="blocks")
    cpu_tuned_file.write_text(json.dumps({"cpu": "test", "linear": {cpp_isa: {"128,64,32": small, "1024,64,32": large}}}))
    load_tuned_blockings(cpp_ops())
    assert linear_blocking(100, 64, 32) == small and linear_blocking(128, 64, 32) == small
    assert linear_blocking(700, 64, 32) == large and linear_blocking(9000, 64, 32) == large
    default = CPU_DEFAULT_BLOCKING[cpp_isa]
    assert linear_blocking(128, 64, 36) == default  # another (N, K)
    a = randint(-127, 127, (100, 32), torch.int8)
    w = randint(-128, 127, (64, 32), torch.int8, seed=1)
    m, e = dyadic(torch.rand(64, dtype=torch.float64) * 1e-2)
    assert torch.equal(int8_matmul(a, w, None, m, e, backend="cpp"), int8_matmul(a, w, None, m, e, backend="torch"))
    cpu_tuned_file.write_text(json.dumps({"cpu": "test", "linear": {cpp_isa: {"128,64,32": dict(small, rows=rows[-1] + 1)}}}))
    with pytest.warns(UserWarning, match=f"ignoring the {cpp_isa} blockings"):
        load_tuned_blockings(cpp_ops())


@pytest.mark.parametrize("text", ["{not json", "[]", '{"linear": {"sse2": {}}}', '{"gemm": {}}',
                                  '{"linear": {"avx2": {"1,2": {"rows": 1, "tiles": 1, "order": "blocks"}}}}',
                                  '{"linear": {"avx2": {"1,2,3": {"rows": 1, "tiles": 0, "order": "blocks"}}}}'])
def test_malformed_cpu_tuned_file_warns_and_is_ignored(text, tmp_path, monkeypatch):
    from kernels.tuning import cpu_tuned_linear

    (tmp_path / "cpu.json").write_text(text)
    monkeypatch.setenv("IBERT_CPU_TUNED", str(tmp_path / "cpu.json"))
    with pytest.warns(UserWarning, match="malformed CPU tuned file"):
        assert cpu_tuned_linear() == {}


@pytest.mark.cpp
def test_linear_op_compiles_in_one_graph():
    a = randint(-128, 127, (9, 40), torch.int8)
    w = randint(-127, 127, (20, 40), torch.int8, seed=1)
    m, e = dyadic(torch.rand(20, dtype=torch.float64) * 1e-2)
    fn = torch.compile(lambda x: int8_matmul(x, w, None, m, e, backend="cpp"), fullgraph=True)
    assert torch.equal(fn(a), int8_matmul(a, w, None, m, e, backend="torch"))


@pytest.mark.cpp
def test_auto_picks_the_cpp_kernel_on_this_cpu():
    a = randint(-128, 127, (4, 8), torch.int8)
    m, e = dyadic(torch.tensor([1e-2]))
    with torch.profiler.profile() as prof:
        kernels.int8_matmul(a, a, None, m, e)
    assert "ibert::linear_cpp" in {ev.name for ev in prof.events()}


def test_without_the_cpp_kernel_auto_runs_the_reference(monkeypatch):
    """Where the C++ kernels cannot run, "auto" takes the reference and "cpp" says why it cannot."""
    import kernels._cpu

    monkeypatch.setattr(kernels._cpu, "cpp_available", lambda: False)
    a = randint(-128, 127, (4, 8), torch.int8)
    m, e = dyadic(torch.tensor([1e-2]))
    with torch.profiler.profile() as prof:
        x = int8_matmul(a, a, None, m, e)
    assert "ibert::linear_cpp" not in {ev.name for ev in prof.events()}
    assert torch.equal(x, int8_matmul(a, a, None, m, e, backend="torch"))
    with pytest.raises(ValueError, match="AVX2"):
        int8_matmul(a, a, None, m, e, backend="cpp")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cpp_sources_have_no_float_arithmetic(source):
    """The C++ kernels are integer-only: no float type anywhere in their source."""
    code = re.sub(r"//.*", "", source.read_text())
    assert not re.findall(r"\b(float|double|__m512[dh]?|__m256[dh]?|__m128[dh]?|__fp16|__bf16|_Float\d+)\b", code)


@pytest.mark.amx
@pytest.mark.parametrize("M", [1, 15, 16, 17, 31, 32, 33, 64, 100])
@pytest.mark.parametrize("K", [4, 60, 64, 68, 128, 196])
@pytest.mark.parametrize("rows", CPU_ROWS["amx_int8"])
def test_amx_linear_tails_are_exact(M, K, rows, monkeypatch):
    """The tile kernel on rows that fill a micro-tile of 16 or 32 or not (the last one padded), K below, at and past
    multiples of the tiles' 64 (the rest on vpdpbusd), channels past a half panel; with the residual and i-GELU."""
    force_isa(monkeypatch, "amx_int8")
    N = 80
    a = randint(-128, 127, (M, K), torch.int8, seed=M + K)
    b = kernels.pack_weight(randint(-128, 127, (N, K), torch.int8, seed=K))
    bias = randint(-(2**20), 2**20, (N,), torch.int32, seed=3)
    m, e = dyadic(torch.rand(N, dtype=torch.float64) * 2.0**-6 / math.sqrt(K))
    res, (mr, er) = randint(-127, 127, (M, N), torch.int8, seed=4), dyadic(torch.tensor([0.6]))
    params, s_out = gelu_params(torch.tensor(1e-3))
    mo, eo = dyadic(s_out.double() / 0.02)
    for tiles in (1, 3):
        cfg = dict(rows=rows, tiles=tiles, order="blocks")
        assert torch.equal(int8_matmul(a, b, bias, m, e, 8, res, mr, er, backend="cpp", config=cfg),
                           int8_matmul(a, b, bias, m, e, 8, res, mr, er, backend="torch"))
        assert torch.equal(int8_matmul_gelu(a, b, bias, m, e, params, mo, eo, 16, 8, backend="cpp", config=cfg),
                           int8_matmul_gelu(a, b, bias, m, e, params, mo, eo, 16, 8, backend="torch"))


@pytest.mark.amx
def test_amx_linear_survives_other_tile_users(monkeypatch):
    """oneDNN (torch._int_mm) loads its own tile configuration on the same threads: each call loads ours again."""
    force_isa(monkeypatch, "amx_int8")
    a = randint(-127, 127, (64, 256), torch.int8, seed=1)
    w = randint(-128, 127, (96, 256), torch.int8, seed=2)
    m, e = dyadic(torch.rand(96, dtype=torch.float64) * 1e-3)
    want = int8_matmul(a, w, None, m, e, backend="torch")
    for _ in range(3):
        assert torch.equal(torch._int_mm(a, w.t()), a.int() @ w.int().t())
        assert torch.equal(int8_matmul(a, w, None, m, e, backend="cpp"), want)


@pytest.mark.amx
def test_the_forced_vnni_path_still_runs_on_an_amx_cpu(monkeypatch):
    from kernels._cpu import cpp_isa, linear_blocking

    force_isa(monkeypatch, "avx512_vnni")
    assert cpp_isa() == "avx512_vnni" and kernels.cpu_isa() == "cpp-avx512_vnni"
    assert linear_blocking(100, 64, 36) == CPU_DEFAULT_BLOCKING["avx512_vnni"]  # a shape no tuned file holds
    monkeypatch.delenv("IBERT_CPU_ISA")
    assert cpp_isa() == "amx_int8"


@pytest.mark.amx
def test_amx_tile_loop_runs_on_every_thread():
    from kernels._cpu import cpp_ops

    assert cpp_ops().amx_tile_loop(1000) == torch.get_num_threads() * 1000 * 4 * 16 * 16 * 64
    with pytest.raises(ValueError, match="steps"):
        cpp_ops().amx_tile_loop(0)
