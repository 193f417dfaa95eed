"""Every Triton kernel compiles ahead of time for sm_80 and sm_90, with no GPU.

The compiler runs in a subprocess: this test process has TRITON_INTERPRET=1, under which kernels are
interpreted functions that cannot be compiled.
"""
import json
import os
import subprocess
import sys

import pytest

from kernels.aot import ARCHS, default_specs


def _run_aot(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reports():
    out = _run_aot("import sys; sys.argv.append('--json'); from kernels.aot import main; main()")
    assert out.returncode == 0, out.stderr[-2000:]
    return {(r["name"], r["arch"]): r for r in json.loads(out.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", [s.name for s in default_specs()])
def test_kernel_compiles(reports, name, arch):
    r = reports[(name, arch)]
    assert r["error"] is None, r["error"]
    assert 0 < r["registers"] <= 255 and r["shared_bytes"] >= 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", [s.name for s in default_specs() if s.name.startswith("int8_gemm")] + ["attention_s128"])
def test_default_configs_do_not_spill(reports, name, arch):
    """The shipped GEMM tiles, and the fused attention at BERT's usual 128 keys (longer rows spill some: see
    benchmarks/autotune/attention_aot.md)."""
    assert reports[(name, arch)]["spill_bytes"] == 0


def test_gpu_compiler_rejects_int8_dot_with_small_k():
    """The interpreter accepts BLOCK_K = 16 for an int8 dot; the NVIDIA compiler must not be trusted to."""
    out = _run_aot("from kernels.aot import gemm_spec, compile_spec\n"
                   "try:\n    compile_spec(gemm_spec(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16), 90)\n"
                   "except Exception as e:\n    print('REJECTED', type(e).__name__)\nelse:\n    print('ACCEPTED')")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REJECTED" in out.stdout
