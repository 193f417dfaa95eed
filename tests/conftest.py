import os

import pytest
import torch

# Triton runs on the CPU through its interpreter; the variable is read when kernels are decorated.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton tests run


def on_device(tree):
    """The tensors of `tree` on DEVICE: Triton runs on the GPU where there is one, else in the interpreter."""
    return torch.utils._pytree.tree_map(lambda t: t.to(DEVICE) if isinstance(t, torch.Tensor) else t, tree)


def on_cpu(tree):
    return torch.utils._pytree.tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, tree)


def pytest_collection_modifyitems(config, items):
    from kernels._cpu import cpp_available, cpp_build, cpp_extension  # after TRITON_INTERPRET is set (kernels read it)

    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA GPU")
    if any(item.get_closest_marker("cpp") for item in items) and not cpp_available():
        skips["cpp"] = pytest.mark.skip(reason="the C++ kernels need x86 AVX2 and g++")
    if any(item.get_closest_marker("amx") for item in items) and (
            not cpp_available() or "amx_int8" not in cpp_extension().isas()):
        skips["amx"] = pytest.mark.skip(reason="the C++ kernels' AMX path needs a CPU with AMX-INT8 (and g++)")
    if any(item.get_closest_marker("cpp_build") for item in items) and cpp_build() is None:
        skips["cpp_build"] = pytest.mark.skip(reason="the C++ module needs x86-64 and g++")
    for item in items:
        for marker, skip in skips.items():
            if item.get_closest_marker(marker):
                item.add_marker(skip)


@pytest.fixture
def device() -> str:
    return DEVICE


def force_isa(monkeypatch, isa: str) -> None:
    """The C++ kernels on `isa` (IBERT_CPU_ISA) for one test, which is skipped where the CPU (or OS) can't run it."""
    from kernels._cpu import cpp_extension

    module = cpp_extension()
    if module is None or isa not in module.isas():
        pytest.skip(f"the C++ kernels can't run {isa} here")
    monkeypatch.setenv("IBERT_CPU_ISA", isa)


@pytest.fixture(params=["amx_int8", "avx512_vnni", "avx2"])
def cpp_isa(request, monkeypatch) -> str:
    """Each instruction set of the C++ kernels in turn (force_isa)."""
    force_isa(monkeypatch, request.param)
    return request.param


@pytest.fixture
def gemm_route(monkeypatch):
    """`gemm_route("int8" | "fp32")` forces the torch path's CPU GEMM route (IBERT_CPU_GEMM) for one test."""
    from kernels._cpu import cpu_gemm_route

    def force(route: str) -> None:
        monkeypatch.setenv("IBERT_CPU_GEMM", route)
        cpu_gemm_route.cache_clear()

    yield force
    monkeypatch.delenv("IBERT_CPU_GEMM", raising=False)
    cpu_gemm_route.cache_clear()
