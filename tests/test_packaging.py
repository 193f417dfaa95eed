"""The project's `kernels` package must never pass for the hub package that transformers probes for."""
import importlib

import kernels


def test_transformers_does_not_mistake_our_kernels_package():
    from transformers.utils import import_utils

    spec = importlib.util.find_spec("kernels")
    assert spec is not None and spec.origin == kernels.__file__
    import_utils.is_kernels_available.cache_clear()
    assert import_utils.is_kernels_available() is False
    assert not hasattr(kernels, "__version__")
    assert not hasattr(kernels, "get_kernel")
