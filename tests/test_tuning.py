"""The autotuning sweep's plumbing: configuration space, correctness check, tuned-config files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import tuning
from ibert.scripts import autotune
from ibert.scripts.autotune import ROW_SIZES, check_config, kernel_configs, sweep_configs

ROOT = Path(__file__).resolve().parent.parent


def test_sweep_space_is_valid():
    full, quick = sweep_configs(), sweep_configs(quick=True)
    assert len(full) == 108 and len(quick) == 24
    for cfg in full:
        tuning.validate_config(cfg)


@pytest.mark.parametrize("kernel", list(ROW_SIZES))
def test_row_kernel_spaces_are_valid(kernel):
    configs = kernel_configs(kernel)
    assert len(configs) == {"gelu": 25, "requantize": 25, "attention": 9}.get(kernel, 5)
    for cfg in configs:
        tuning.validate_row_config(kernel, cfg)


@pytest.mark.parametrize("kernel,cfg", [("softmax", dict(num_warps=2)), ("layernorm", dict(num_warps=8)),
                                        ("gelu", dict(BLOCK=256, num_warps=2)),
                                        ("requantize", dict(BLOCK=4096, num_warps=16)),
                                        ("attention", dict(BLOCK_M=64, num_warps=4))])
def test_row_config_correctness_check_under_interpreter(kernel, cfg):
    assert check_config(cfg, kernel)


@pytest.mark.parametrize("cfg", [dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3),
                                 dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=2)])
def test_config_correctness_check_under_interpreter(cfg):
    assert check_config(cfg)


@pytest.mark.parametrize("kernel,cfg,targets", [
    ("gemm", dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=2), ["sm80", "sm90"]),
    ("softmax", dict(num_warps=4), ["sm80 n=128", "sm90 n=128", "sm80 n=256", "sm90 n=256"]),
    ("gelu", dict(BLOCK=2048, num_warps=8), ["sm80", "sm90"]),
])
def test_aot_report_for_a_config(kernel, cfg, targets):
    code = (f"import json; from ibert.scripts.autotune import aot_reports; "
            f"print(json.dumps(aot_reports([{cfg!r}], {kernel!r})))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["target"] for r in rows] == targets
    assert all(r["registers"] > 0 and r["error"] == "" for r in rows)


@pytest.fixture
def tuned_file(tmp_path, monkeypatch):
    path = tmp_path / "tuned.json"
    monkeypatch.setenv("IBERT_TUNED_CONFIGS", str(path))
    tuning.tuned_configs.cache_clear()
    yield path
    tuning.tuned_configs.cache_clear()


def test_tuned_file_round_trip(tuned_file):
    cfg = dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, GROUP_M=4, num_warps=2, num_stages=2)
    tuned_file.write_text(json.dumps({"device": "test", "gemm": {"1024,768,768": cfg},
                                      "softmax": {"128": {"num_warps": 1}, "256": {"num_warps": 2}},
                                      "gelu": {"3072": {"BLOCK": 2048, "num_warps": 8}}}))
    cpu = torch.device("cpu")
    assert tuning.gemm_config(1024, 768, 768, cpu) == cfg
    assert tuning.gemm_config(4096, 768, 768, cpu) == cfg  # nearest M with the same N, K
    assert tuning.gemm_config(1024, 3072, 768, cpu) == tuning._GEMM_DEFAULTS["interpreter"]
    assert tuning.row_config("softmax", 128, cpu) == {"num_warps": 1}
    assert tuning.row_config("softmax", 384, cpu) == {"num_warps": 2}  # nearest tuned row length
    assert tuning.row_config("gelu", 4096, cpu) == {"BLOCK": 2048, "num_warps": 8}
    assert tuning.row_config("layernorm", 768, cpu) == {"num_warps": 4}  # not tuned: the default
    assert tuning.row_config("requantize", 768, cpu) == {"BLOCK": 1024, "num_warps": 4}


@pytest.mark.parametrize("text", ["{not json", '{"gemm": {"1024,768": {}}}', '{"gemm": {"1,2,3": {"BLOCK_M": 64}}}',
                                  '{"gemm": {"1,2,3": {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16, "GROUP_M": 8, '
                                  '"num_warps": 4, "num_stages": 2}}}', "[]",
                                  '{"softmax": {"128": {"num_warps": 3}}}', '{"gelu": {"3072": {"num_warps": 4}}}',
                                  '{"flash": {}}', '{"attention": {"128": {"BLOCK_M": 8, "num_warps": 4}}}'])
def test_malformed_tuned_file_warns_and_uses_defaults(tuned_file, text):
    tuned_file.write_text(text)
    with pytest.warns(UserWarning, match="malformed tuned-config file"):
        cfg = tuning.gemm_config(1024, 768, 768, torch.device("cpu"))
    assert cfg == tuning._GEMM_DEFAULTS["interpreter"]
    assert tuning.row_config("softmax", 128, torch.device("cpu")) == {"num_warps": 4}


def test_timed_sweep_picks_the_fastest_exact_config_and_the_kernels_load_it(tmp_path, monkeypatch):
    """The GPU sweep's plumbing on the interpreter: exactness check, selection, tuned file, loading.
    The timer is fake (do_bench needs a GPU): it ranks configs by warps, fewest first."""
    monkeypatch.setattr(autotune, "shapes", lambda: [(40, 32, 64)])
    monkeypatch.setattr(autotune, "BATCHES", (1,))
    monkeypatch.setattr(autotune, "SEQS", (3,))
    monkeypatch.setitem(autotune.ROW_SIZES, "softmax", (16,))
    gemm_configs = [dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, num_warps=w, num_stages=1) for w in (8, 2, 4)]
    softmax_configs = [dict(num_warps=w) for w in (4, 1, 2)]

    def bench_with(configs):  # called once per config, in order (one shape)
        times = iter(float(cfg["num_warps"]) for cfg in configs)

        def bench(fn):
            fn()
            return next(times)
        return bench

    rows, best_gemm = autotune.gpu_sweep(gemm_configs, quick=False, device="cpu", bench=bench_with(gemm_configs))
    assert all(r["error"] == "" for r in rows) and len(rows) == 3
    assert best_gemm == {"40,32,64": gemm_configs[1]}
    rows, best_softmax = autotune.gpu_row_sweep("softmax", softmax_configs, device="cpu",
                                                bench=bench_with(softmax_configs))
    assert best_softmax == {"16": {"num_warps": 1}}
    path = tmp_path / "sm80.json"
    autotune.save_tuned({"gemm": best_gemm, "softmax": best_softmax}, path, "test GPU")
    autotune.save_tuned({"layernorm": {"768": {"num_warps": 2}}}, path, "test GPU")  # merged, not replaced
    monkeypatch.setenv("IBERT_TUNED_CONFIGS", str(path))
    tuning.tuned_configs.cache_clear()
    try:
        cpu = torch.device("cpu")
        assert tuning.gemm_config(40, 32, 64, cpu) == gemm_configs[1]
        assert tuning.row_config("softmax", 16, cpu) == {"num_warps": 1}
        assert tuning.row_config("layernorm", 768, cpu) == {"num_warps": 2}
    finally:
        tuning.tuned_configs.cache_clear()


def test_bad_launch_config_is_a_clear_error():
    import kernels
    from conftest import DEVICE

    x = torch.zeros(2, 8, dtype=torch.int32, device=DEVICE)
    params = kernels.softmax_params(torch.tensor(1e-3, device=DEVICE))
    with pytest.raises(ValueError, match="softmax config needs exactly the keys"):
        kernels.softmax(x, params, backend="triton", config={"BLOCK": 128})
    a = torch.zeros(4, 32, dtype=torch.int8, device=DEVICE)
    with pytest.raises(ValueError, match="GEMM config needs exactly the keys"):
        kernels.int8_matmul(a, a, backend="triton", config={"BLOCK_M": 64})


@pytest.mark.cpp
def test_cpu_sweep_picks_the_fastest_exact_blocking_and_the_kernels_load_it(tmp_path, monkeypatch):
    """The C++ sweep's plumbing: exactness check, selection, tuned file, loading. The timer is fake: it ranks
    blockings by tiles per block, most first."""
    from kernels._cpu import cpp_ops, linear_blocking, load_tuned_blockings

    configs = [dict(rows=r, tiles=t, order="panels") for r in (1, 4) for t in (2, 8)]
    fake = lambda fns: {name: [100.0 / int(name.split()[1][1:])] * 3 for name, fn in fns.items() if fn() is not None}
    rows, best = autotune.cpu_linear_sweep("avx2", configs, [(40, 70, 36)], timer=fake)
    assert len(rows) == 4 and all(r["error"] == "" for r in rows)
    assert best == {"40,70,36": dict(rows=1, tiles=8, order="panels")}
    path = tmp_path / "cpu.json"
    autotune.save_cpu_tuned({"avx2": best}, path, "test CPU")
    autotune.save_cpu_tuned({"avx2": {"128,70,36": configs[0]}}, path, "test CPU")  # merged, not replaced
    monkeypatch.setenv("IBERT_CPU_TUNED", str(path))
    monkeypatch.setenv("IBERT_CPU_ISA", "avx2")
    try:
        load_tuned_blockings(cpp_ops())
        assert linear_blocking(40, 70, 36) == best["40,70,36"] and linear_blocking(128, 70, 36) == configs[0]
    finally:
        cpp_ops().set_linear_blocking("avx2", [])
        monkeypatch.delenv("IBERT_CPU_TUNED")
        load_tuned_blockings(cpp_ops())


def test_cpu_blocking_spaces_are_valid():
    from kernels.tuning import validate_cpu_blocking

    for isa, rows in tuning.CPU_ROWS.items():
        for quick in (False, True):
            space = autotune.cpu_blocking_space(isa, quick)
            assert space and all(validate_cpu_blocking(c) and c["rows"] in rows for c in space)
            assert len({autotune.cpu_blocking_name(c) for c in space}) == len(space)


def test_cpu_tuned_file_is_keyed_by_this_cpu(monkeypatch, tmp_path):
    monkeypatch.delenv("IBERT_CPU_TUNED", raising=False)
    assert tuning.cpu_tuned_path() == tuning.TUNED_DIR / f"cpu-{tuning.cpu_id()}.json"
    assert tuning.cpu_id() in tuning.cpu_name()
    if Path("/proc/cpuinfo").is_file():  # <vendor>-<family>-<model>, as /proc/cpuinfo names them
        vendor, family, model = tuning.cpu_id().split("-")
        assert vendor and family.isdigit() and model.isdigit()
    monkeypatch.setenv("IBERT_CPU_TUNED", str(tmp_path / "x.json"))
    assert tuning.cpu_tuned_path() == tmp_path / "x.json" and tuning.cpu_tuned_linear() == {}
