"""Packaging: the console commands, no sys.path edits, and our `kernels` package never passing for the hub's."""
import importlib
import shutil
import subprocess
from pathlib import Path

import pytest

import kernels


def test_transformers_does_not_mistake_our_kernels_package():
    from transformers.utils import import_utils

    spec = importlib.util.find_spec("kernels")
    assert spec is not None and spec.origin == kernels.__file__
    import_utils.is_kernels_available.cache_clear()
    assert import_utils.is_kernels_available() is False
    assert not hasattr(kernels, "__version__")
    assert not hasattr(kernels, "get_kernel")


@pytest.mark.parametrize("command,args,expect", [
    ("ibert-train", ["task=rte", "quant_mode=true", "--cfg", "job"], "quant_mode: true"),
    ("ibert-evaluate", ["model_dir=x", "--cfg", "job"], "model_dir: x"),
    ("ibert-predict", ["--help"], "--model"),
    ("ibert-bench", ["--help"], "--batch"),
])
def test_console_commands_work_from_any_directory(tmp_path, command, args, expect):
    exe = shutil.which(command)
    assert exe, f"{command} is not installed: pip install -e ."
    out = subprocess.run([exe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expect in out.stdout
    assert not any(tmp_path.iterdir())  # composing or printing help writes nothing


def test_scripts_edit_no_sys_path():
    root = Path(__file__).resolve().parent.parent
    assert [p.name for p in (root / "scripts").glob("*.py") if "sys.path" in p.read_text()] == []
