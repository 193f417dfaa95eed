"""Packaging: the console commands, no sys.path edits, and our `kernels` package never passing for the hub's."""
import importlib
import os
import shutil
import subprocess
import sys
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
    exe = shutil.which(command, path=str(Path(sys.executable).parent)) or shutil.which(command)
    assert exe, f"{command} is not installed: pip install -e ."
    out = subprocess.run([exe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expect in out.stdout
    assert not any(tmp_path.iterdir())  # composing or printing help writes nothing


def test_scripts_edit_no_sys_path():
    root = Path(__file__).resolve().parent.parent
    assert [p.name for p in (root / "scripts").glob("*.py") if "sys.path" in p.read_text()] == []


NO_TRITON = """
import sys
class NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTriton())
import torch
import ibert, kernels
from ibert.engine import convert_to_integer
assert "triton" not in sys.modules
torch.manual_seed(0)
model = ibert.IBertForSequenceClassification(ibert.IBertConfig(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=40, quant_mode=True)).train()
ids = torch.randint(2, 99, (2, 9))
with torch.no_grad():
    model(input_ids=ids)
    model.eval()
    assert torch.equal(model(input_ids=ids).logits, convert_to_integer(model)(input_ids=ids).logits)
try:
    kernels.requantize(torch.zeros(4, dtype=torch.int32), *kernels.dyadic(torch.tensor([0.5])), backend="triton")
except ValueError as exc:
    print(exc)
"""


def test_import_and_the_torch_path_work_without_triton():
    """Where no Triton wheel exists (macOS, Windows): the package imports, the fake-quant model and the engine
    run on the torch path, and backend='triton' is a clear error."""
    out = subprocess.run([sys.executable, "-c", NO_TRITON], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "backend='triton' needs Triton, which is not installed" in out.stdout


def test_wheel_carries_every_config_and_cpp_source(tmp_path):
    """A wheel (what `pip install` of a release gets) holds every config group's YAML, the C++ sources and the
    tuned configurations."""
    import zipfile

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path), str(root)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "absent from the `packages` configuration" not in out.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"ibert/configs/{p.relative_to(root / 'configs')}" for p in (root / "configs").rglob("*.yaml")}
    expected |= {f"kernels/csrc/{p.name}" for p in (root / "kernels" / "csrc").iterdir() if p.suffix in (".cpp", ".h")}
    expected |= {f"kernels/tuned/{p.name}" for p in (root / "kernels" / "tuned").glob("*.json")}
    assert expected <= names, sorted(expected - names)
