"""Triton where it is installed. Where it is not (macOS, Windows, some aarch64 wheels), stand-ins that let the
kernel modules import, so that the torch and C++ paths run, and that say what is missing if a Triton kernel is
ever launched (`resolve_backend` refuses backend="triton" first)."""
from __future__ import annotations

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:
    AVAILABLE = False

    class _Missing:
        """Triton's place: every attribute is another stand-in; `@triton.jit` gives a kernel that cannot run."""

        def __init__(self, name: str):
            self._name = name

        def __getattr__(self, attr: str) -> "_Missing":
            return _Missing(f"{self._name}.{attr}")

        def __getitem__(self, grid) -> "_Missing":
            return self

        def __call__(self, *args, **kwargs):
            if self._name == "triton.jit" and len(args) == 1 and callable(args[0]):
                return _Missing(f"the Triton kernel {args[0].__name__}")
            raise ModuleNotFoundError(f"{self._name} needs Triton, which is not installed (pip install triton; "
                                      f"or backend='torch')")

    triton, tl = _Missing("triton"), _Missing("triton.language")

__all__ = ["AVAILABLE", "tl", "triton"]
