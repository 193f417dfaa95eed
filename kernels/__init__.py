"""Integer kernels of I-BERT: Triton kernels with exact pure-PyTorch references.

Each op takes `backend` in `BACKENDS` ("auto", "triton", "torch", "cpp"): auto runs Triton on CUDA tensors, the
C++ kernels (`kernels/csrc`) on x86 CPUs with AVX-512 VNNI where the op has one and they build, and the torch
reference elsewhere; tests run Triton on the CPU through the interpreter (TRITON_INTERPRET=1, set before import).

This package deliberately defines no `__version__`: transformers probes for an unrelated package that is
also imported as `kernels` (`is_kernels_available()`), and must not mistake this one for it.
"""
from kernels._cpu import CPU_BACKENDS as BACKENDS
from kernels._cpu import cpu_isa
from kernels._utils import set_compile
from kernels.attention import attention
from kernels.gelu import gelu, gelu_params
from kernels.gemm import PackedWeight, int8_bmm, int8_matmul, int8_matmul_gelu, pack_weight
from kernels.layernorm import layernorm, layernorm_params
from kernels.requant import dyadic, requantize
from kernels.softmax import softmax, softmax_params

__all__ = [
    "dyadic", "requantize", "int8_matmul", "int8_matmul_gelu", "int8_bmm", "pack_weight", "PackedWeight", "attention", "gelu", "gelu_params",
    "softmax", "softmax_params", "layernorm", "layernorm_params", "set_compile", "cpu_isa", "BACKENDS",
]
