"""One encoder layer of the integer engine as a single C++ call (x86 CPUs with AVX-512 VNNI): the int8 linear,
fused attention and i-LayerNorm kernels in the order of `ibert.engine.IntegerLayer`, with no Python between them.

Between separate kernel calls the interpreter ran with caches that the weights had just swept (a layer streams 7 MB
of them at roberta-base size): 6-8% of a forward. The reference is the same layer composed of the public ops
(`IntegerLayer` with any other backend); the engine's tests compare the two exactly.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import torch

from kernels._cpu import cpp_ops
from kernels.gemm import PackedWeight


# The schema is defined here; the CPU kernel (layer_cpu.cpp) registers itself when the extension loads, and is
# dispatched in C++ without a Python function of its own (a Python custom op cost 1.4% of a forward at 8 x 128).
torch.library.define(
    "ibert::encoder_layer_cpp",
    "(Tensor x, Tensor mask, Tensor head_mask, Tensor[] packed, Tensor[] buffers, int heads, int bits, int ln_bits, "
    "int gelu_input_bits, int softmax_bits, bool return_probs) -> (Tensor, Tensor)",
)


@torch.library.register_fake("ibert::encoder_layer_cpp")
def _(x, mask, head_mask, packed, buffers, heads, bits, ln_bits, gelu_input_bits, softmax_bits, return_probs):
    B, S, _ = x.shape
    return x.new_empty(x.shape), x.new_empty((B, heads, S, S) if return_probs else (0,), dtype=torch.uint8)


def encoder_layer_cpp(
    x: torch.Tensor, mask: torch.Tensor, head_mask: torch.Tensor | None, weights: list[PackedWeight],
    buffers: Mapping[str, torch.Tensor], heads: int, bits: int, ln_bits: int, gelu_input_bits: int,
    softmax_bits: int, return_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x: [B, S, H] int8 CPU; mask: [B, S] int32 additive; head_mask: [heads] uint8 or None.
    weights: `pack_weight` of the int8 weights [N, K] of the QKV, attention output, FFN in and FFN out layers;
    buffers: the layer's other integer buffers by name (`buffer_names()`; `ibert.engine.IntegerLayer.cpp_buffers`).
    Returns [B, S, H] int8 and, with return_probs, the probabilities [B, heads, S, S] uint8 (else None)."""
    names = buffer_names()  # loading the module also registers the kernel
    if buffers.keys() != set(names):
        raise ValueError(f"encoder_layer_cpp: buffers missing {sorted(set(names) - buffers.keys())}, unknown "
                         f"{sorted(buffers.keys() - set(names))}")
    if not all(w.packed is not None and w.packed.dtype == torch.uint8 and w.is_current(w.weight) for w in weights):
        raise ValueError("encoder_layer_cpp: every weight must be packed for the C++ kernel (pack_weight where it "
                         "runs), after its last change")
    no_head_mask = x.new_empty(0, dtype=torch.uint8)
    y, probs = torch.ops.ibert.encoder_layer_cpp(
        x.contiguous(), mask.contiguous(), no_head_mask if head_mask is None else head_mask.contiguous(),
        [w.packed for w in weights], [buffers[n] for n in names], heads, bits, ln_bits, gelu_input_bits,
        softmax_bits, return_probs)
    return y, probs if return_probs else None


@functools.cache
def buffer_names() -> tuple[str, ...]:
    """The names of the layer's integer buffers, in the op's order (defined once, in layer_cpu.cpp)."""
    return tuple(cpp_ops().layer_buffer_names())
