"""One encoder layer of the integer engine as a single C++ call (x86 CPUs with AVX-512 VNNI): the int8 linear,
fused attention and i-LayerNorm kernels in the order of `ibert.engine.IntegerLayer`, with no Python between them.

Between separate kernel calls the interpreter ran with caches that the weights had just swept (a layer streams 7 MB
of them at roberta-base size): 6-8% of a forward. The reference is the same layer composed of the public ops
(`IntegerLayer` with any other backend); the engine's tests compare the two exactly.
"""
from __future__ import annotations

import torch

from kernels._cpu import cpp_extension
from kernels.gemm import _packed_weight


@torch.library.custom_op("ibert::encoder_layer_cpp", mutates_args=())
def _encoder_layer_cpp_op(x: torch.Tensor, mask: torch.Tensor, head_mask: torch.Tensor, weights: list[torch.Tensor],
                          buffers: list[torch.Tensor], heads: int, bits: int, ln_bits: int, gelu_input_bits: int,
                          softmax_bits: int, return_probs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The C++ layer as a registered op (seen by dispatch modes). See `encoder_layer_cpp`."""
    packed = [_packed_weight(w) for w in weights]
    return tuple(cpp_extension().encoder_layer(x, mask, head_mask, packed, buffers, heads, bits, ln_bits,
                                               gelu_input_bits, softmax_bits, return_probs))


@_encoder_layer_cpp_op.register_fake
def _(x, mask, head_mask, weights, buffers, heads, bits, ln_bits, gelu_input_bits, softmax_bits, return_probs):
    B, S, _ = x.shape
    return x.new_empty(x.shape), x.new_empty((B, heads, S, S) if return_probs else (0,), dtype=torch.uint8)


def encoder_layer_cpp(
    x: torch.Tensor, mask: torch.Tensor, head_mask: torch.Tensor | None, weights: list[torch.Tensor],
    buffers: list[torch.Tensor], heads: int, bits: int, ln_bits: int, gelu_input_bits: int, softmax_bits: int,
    return_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x: [B, S, H] int8 CPU; mask: [B, S] int32 additive; head_mask: [heads] uint8 or None.
    weights: the int8 weights [N, K] of the QKV, attention output, FFN in and FFN out layers (packed on first use);
    buffers: the layer's other integer buffers in the order of `ibert.engine.IntegerLayer.cpp_buffers`.
    Returns [B, S, H] int8 and, with return_probs, the probabilities [B, heads, S, S] uint8 (else None)."""
    no_head_mask = x.new_empty(0, dtype=torch.uint8)
    y, probs = _encoder_layer_cpp_op(x.contiguous(), mask.contiguous(), no_head_mask if head_mask is None else
                                     head_mask.contiguous(), weights, buffers, heads, bits, ln_bits, gelu_input_bits,
                                     softmax_bits, return_probs)
    return y, probs if return_probs else None
