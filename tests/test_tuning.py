"""The autotuning sweep's plumbing: configuration space, correctness check, tuned-config files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import tuning
from scripts.autotune import check_config, sweep_configs

ROOT = Path(__file__).resolve().parent.parent


def test_sweep_space_is_valid():
    full, quick = sweep_configs(), sweep_configs(quick=True)
    assert len(full) == 108 and len(quick) == 24
    for cfg in full:
        tuning.validate_config(cfg)


@pytest.mark.parametrize("cfg", [dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3),
                                 dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=2)])
def test_config_correctness_check_under_interpreter(cfg):
    assert check_config(cfg)


def test_aot_report_for_a_config():
    cfg = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=2)
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from scripts.autotune import aot_reports; "
            f"print(json.dumps(aot_reports([{cfg!r}])))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["arch"] for r in rows] == ["sm80", "sm90"]
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
    tuned_file.write_text(json.dumps({"gemm": {"1024,768,768": cfg}}))
    cpu = torch.device("cpu")
    assert tuning.gemm_config(1024, 768, 768, cpu) == cfg
    assert tuning.gemm_config(4096, 768, 768, cpu) == cfg  # nearest M with the same N, K
    assert tuning.gemm_config(1024, 3072, 768, cpu) == tuning._GEMM_DEFAULTS["interpreter"]


@pytest.mark.parametrize("text", ["{not json", '{"gemm": {"1024,768": {}}}', '{"gemm": {"1,2,3": {"BLOCK_M": 64}}}',
                                  '{"gemm": {"1,2,3": {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16, "GROUP_M": 8, '
                                  '"num_warps": 4, "num_stages": 2}}}', "[]"])
def test_malformed_tuned_file_warns_and_uses_defaults(tuned_file, text):
    tuned_file.write_text(text)
    with pytest.warns(UserWarning, match="malformed tuned-config file"):
        cfg = tuning.gemm_config(1024, 768, 768, torch.device("cpu"))
    assert cfg == tuning._GEMM_DEFAULTS["interpreter"]
