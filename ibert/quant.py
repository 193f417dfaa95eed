"""Fake-quantization modules (quantization-aware training) whose eval-mode values are exactly the integers
the integer engine computes: every integer step calls the `kernels` op on recovered integers, with the model's
`config.backend` ("auto": Triton on CUDA; on the CPU the C++ kernel where the op has one, else the torch
reference). The backends are equal bit for bit, so the choice changes speed, not a number.

Tensors travel as `(x, scale)`: in quant mode `x` is float holding `integer * scale`, and `scale` is a
float tensor of one element or one per channel (last dimension); in float mode `scale` is None.
Gradients pass straight through (STE): each integer result `y_int * s` is returned as
`y_float + (y_int * s - y_float).detach()`, so training sees the float op's gradient.
"""
from __future__ import annotations

import warnings
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import kernels
from kernels._utils import maybe_compiled, out_dtype, qmax
from kernels.requant import requantize_reference

EPS_SCALE = 1e-8  # smallest scale: a tensor of zeros still gets a finite scale

Scaled = tuple[torch.Tensor, "torch.Tensor | None"]
T = TypeVar("T")


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_float: torch.Tensor, y_exact: torch.Tensor) -> torch.Tensor:
        return y_exact

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def ste(y_float: torch.Tensor, y_exact: torch.Tensor) -> torch.Tensor:
    """Value of `y_exact` (exactly), gradient of `y_float`; no elementwise pass."""
    if not (torch.is_grad_enabled() and y_float.requires_grad):
        return y_exact.detach()
    return _StraightThrough.apply(y_float, y_exact.detach())


def to_int(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The int32 integers a scaled float tensor holds (exact: x was produced as integer * scale, and a float32
    holds integers exactly only below 2**24). Not int64: float -> int64 runs ~10x slower on the CPU."""
    return torch.round(x.detach() / scale).int()


def _requant_values(x: torch.Tensor, s_in: torch.Tensor, m: torch.Tensor, e: torch.Tensor, bits: int,
                    s_out: torch.Tensor, identity: torch.Tensor | None, s_id: torch.Tensor | None,
                    mr: torch.Tensor | None, er: torch.Tensor | None) -> torch.Tensor:
    """`kernels.requantize` of the integers x (and identity) hold, as float values of scale s_out.
    One fused graph under `kernels.set_compile(True)`: the QAT step's hottest elementwise work."""
    res = None if identity is None else torch.round(identity / s_id).long()
    q = requantize_reference(torch.round(x / s_in).long(), m, e, bits, res, mr, er)
    return q.float() * s_out


_requant_values_fused = maybe_compiled(_requant_values)


def weight_scale(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """Symmetric scale of a weight: max |w| per output row (per_channel) or over the tensor, / qmax."""
    lo, hi = torch.aminmax(w.detach(), dim=1) if per_channel else (v.reshape(1) for v in torch.aminmax(w.detach()))
    return torch.maximum(-lo, hi).clamp(min=EPS_SCALE) / qmax(bits)


class FrozenWeightCache:
    """Mixin for modules with a `weight`: values derived from it (and detached from autograd) are computed once
    per weight version (same storage and version counter, which in-place updates, optimizer steps and
    `load_state_dict` bump), so evaluation quantizes each weight once, not every forward. `.train()` and
    `.eval()` empty the cache too: changes made through `.data` bump no version."""

    def train(self, mode: bool = True):
        self.__dict__.pop("_frozen_cache", None)
        return super().train(mode)

    def frozen(self, name: str, compute: Callable[[], T], extra: tuple = ()) -> T:
        """compute(), once per weight version (and value of `extra`, which compute also depends on)."""
        w = self.weight
        key = (w.data_ptr(), w._version, w.shape, w.dtype, extra)
        cache = self.__dict__.setdefault("_frozen_cache", {})
        if name not in cache or cache[name][0] != key:
            cache[name] = (key, compute())
        return cache[name][1]


def quantize_weight(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer-valued float weight `clamp(round(w / s))` with a straight-through gradient."""
    s = scale.reshape(-1, *([1] * (w.dim() - 1)))
    w_scaled = w / s
    return ste(w_scaled, torch.clamp(torch.round(w_scaled.detach()), -qmax(bits), qmax(bits)))


class QuantAct(nn.Module):
    """Activation quantizer with a static range: EMA of min/max in training (momentum 0.95), frozen in eval.

    forward(x, s_in, identity, s_id) requantizes `x` (and adds `identity`, each with its own dyadic
    multiplier) to `bits` bits, exactly as `kernels.requantize` does; a float input (s_in None) is quantized
    directly.

    channels > 1: a range per channel (last dimension) and a scale per channel, `smoothing` times one common
    factor, the smallest that fits every channel's range (SmoothQuant's migration: the consumer's weight columns
    carry the smoothing; see `smooth_layernorm_outputs`). With smoothing 1 the scales equal the per-tensor one.
    """

    def __init__(self, bits: int, momentum: float = 0.95, quant_mode: bool = False, channels: int = 1):
        super().__init__()
        self.bits, self.momentum, self.quant_mode = bits, momentum, quant_mode
        self.register_buffer("x_min", torch.zeros(channels))
        self.register_buffer("x_max", torch.zeros(channels))
        if channels > 1:
            self.register_buffer("smoothing", torch.ones(channels))
        self.cap: ScaleProductCap | None = None  # set by ScaleProductCap

    @property
    def per_channel(self) -> bool:
        return self.x_min.numel() > 1

    def extra_repr(self) -> str:
        return f"bits={self.bits}, quant_mode={self.quant_mode}" + (
            f", channels={self.x_min.numel()}" if self.per_channel else "")

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the range with x's min and max (per channel: over all but the last dimension); under
        data-parallel training, those of the global batch (the ranks' shards reduced), so every rank keeps the
        range one process would."""
        x = x.detach()
        if self.per_channel:
            lo, hi = (v.float() for v in torch.aminmax(x.reshape(-1, x.shape[-1]), dim=0))
        else:
            lo, hi = (v.reshape(1).float() for v in torch.aminmax(x))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(lo, dist.ReduceOp.MIN)
            dist.all_reduce(hi, dist.ReduceOp.MAX)
        if bool((self.x_min == self.x_max).all()):
            self.x_min.copy_(lo)
            self.x_max.copy_(hi)
        else:
            self.x_min.mul_(self.momentum).add_((1 - self.momentum) * lo)
            self.x_max.mul_(self.momentum).add_((1 - self.momentum) * hi)

    def channel_range(self) -> torch.Tensor:
        """max(|x_min|, |x_max|): [1], or [channels]."""
        return torch.maximum(self.x_min.abs(), self.x_max.abs())

    def range_scale(self) -> torch.Tensor:
        """The scale ([1], or [channels]) that the current range asks for."""
        r = self.channel_range()
        if not self.per_channel:
            return r.clamp(min=EPS_SCALE) / qmax(self.bits)
        return (r / self.smoothing).amax().clamp(min=EPS_SCALE) / qmax(self.bits) * self.smoothing

    def scale(self) -> torch.Tensor:
        """Output scale ([1], or [channels]): the range's, shrunk where a `ScaleProductCap` binds (the largest
        values saturate)."""
        s = self.range_scale()
        return s if self.cap is None else s * self.cap.factor()

    def multiplier(self, s_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dyadic (m, e) taking integers of scale s_in to this quantizer's scale."""
        return kernels.dyadic(s_in / self.scale())

    def forward(self, x: torch.Tensor, s_in: torch.Tensor | None = None,
                identity: torch.Tensor | None = None, s_id: torch.Tensor | None = None) -> Scaled:
        if self.training and self.quant_mode:
            self.observe(x if identity is None else x + identity)
        return self.quantize(x, s_in, identity, s_id)

    def quantize(self, x: torch.Tensor, s_in: torch.Tensor | None = None,
                 identity: torch.Tensor | None = None, s_id: torch.Tensor | None = None) -> Scaled:
        """`forward` with the range as it is (not observed)."""
        if not self.quant_mode:
            return (x if identity is None else x + identity), None
        total = x if identity is None else x + identity
        s_out = self.scale()
        if s_in is None:
            q = torch.clamp(torch.round(total.detach() / s_out), -qmax(self.bits), qmax(self.bits))
            return ste(total, q * s_out), s_out
        m, e = self.multiplier(s_in)
        mr, er = self.multiplier(s_id) if identity is not None else (None, None)
        with torch.no_grad():
            y = _requant_values_fused(x.detach(), s_in, m, e, self.bits, s_out,
                                      None if identity is None else identity.detach(), s_id, mr, er)
        return ste(total, y), s_out


class ScaleProductCap:
    """Keeps the product of two quantizers' scales at most `limit` (Q and K, whose product over sqrt(d) is the
    i-softmax input scale, which must stay <= ln2 / 8): where their ranges ask for more, both scales shrink by
    one factor and their largest values saturate. It holds no state: the scales follow from the two ranges."""

    def __init__(self, a: QuantAct, b: QuantAct, limit: float):
        self.acts, self.limit = (a, b), limit
        a.cap = b.cap = self

    def factor(self) -> torch.Tensor:
        """1, or the factor [1] < 1 that brings the product of the two range scales to `limit`."""
        a, b = (act.range_scale() for act in self.acts)
        return torch.sqrt(self.limit / (a * b)).clamp(max=1.0)

    def check(self) -> None:
        """Warn when the cap binds (once both ranges have been observed: one host sync a step)."""
        f = self.factor().item()
        if f < 1:
            tops = " and ".join(f"+-{act.range_scale().item() * qmax(act.bits):.4g}" for act in self.acts)
            warnings.warn(f"activation ranges {tops} ask for scales whose product exceeds {self.limit:.4g}: both "
                          f"are clipped by a factor {f:.4g}")


class QuantEmbedding(FrozenWeightCache, nn.Embedding):
    """Embedding with an 8-bit per-tensor weight."""

    def __init__(self, num: int, dim: int, padding_idx: int | None = None, bits: int = 8, quant_mode: bool = False):
        super().__init__(num, dim, padding_idx=padding_idx)
        self.bits, self.quant_mode = bits, quant_mode

    def weight_scale(self) -> torch.Tensor:
        return weight_scale(self.weight, self.bits, per_channel=False)

    def forward(self, ids: torch.Tensor) -> Scaled:
        if not self.quant_mode:
            return super().forward(ids), None
        s = self.frozen("scale", self.weight_scale)
        # Quantization is elementwise: quantize the looked-up rows, not the whole table.
        rows = F.embedding(ids, self.weight, self.padding_idx)
        return quantize_weight(rows, s, self.bits) * s, s


class QuantLinear(FrozenWeightCache, nn.Linear):
    """Linear layer with 8-bit per-output-channel weights and a 32-bit bias of the accumulator's scale.

    Quant mode returns the integer accumulator `x_int @ w_int.T + b_int` (exact in fp32 while partial sums
    stay below 2**24) times its per-channel scale s_acc (s_x * s_w; see `quantized_weight` for a per-channel s_x).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 8, bias_bits: int = 32,
                 quant_mode: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.bits, self.bias_bits, self.quant_mode = bits, bias_bits, quant_mode

    def weight_scale(self) -> torch.Tensor:
        return weight_scale(self.weight, self.bits, per_channel=True)

    def quantized_weight(self, s_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_acc [N], the integer-valued float weight w_int [N, K] with a straight-through gradient), for an input
        of scale s_x: x_int @ w_int.T has scale s_acc. A per-tensor s_x: w_int = round(w / s_w), s_acc = s_x s_w.
        A per-channel s_x [K] (a smoothed input) is folded into the weight first: w_int = round(w s_x / s_acc), s_acc
        the per-row scale of w s_x. Without a gradient to the weight, computed once per weight version (and s_x)."""
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return self._quantize(s_x)
        s_acc, w_int = self.integer_weight(s_x)
        return s_acc, w_int.to(self.weight.dtype)

    def integer_weight(self, s_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`quantized_weight` without a gradient: (s_acc [N], w_int [N, K] int8 for 8 bits)."""
        if s_x.numel() == 1:  # the weight's integers do not depend on s_x
            s_w, w_int = self.frozen("weight", lambda: self._integer(torch.ones(1, device=s_x.device)))
            return s_x * s_w, w_int
        return self.frozen("smoothed weight", lambda: self._integer(s_x), extra=tuple(s_x.tolist()))

    def _integer(self, s_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            s_acc, w = self._quantize(s_x)
        return s_acc, w.to(out_dtype(self.bits))

    def _quantize(self, s_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if s_x.numel() == 1:
            s_w = self.weight_scale()
            return s_x * s_w, quantize_weight(self.weight, s_w, self.bits)
        w = self.weight * s_x
        s_acc = weight_scale(w, self.bits, per_channel=True)
        return s_acc, quantize_weight(w, s_acc, self.bits)

    def bias_int(self, s_acc: torch.Tensor) -> torch.Tensor:
        """Integer-valued float bias with a straight-through gradient."""
        b = self.bias / s_acc
        return ste(b, torch.clamp(torch.round(b.detach()), -qmax(self.bias_bits), qmax(self.bias_bits)))

    def forward(self, x: torch.Tensor, s_x: torch.Tensor | None = None) -> Scaled:
        if not self.quant_mode:
            return super().forward(x), None
        if s_x is None:
            raise ValueError("QuantLinear in quant mode needs the input's scale")
        s_acc, w_int = self.quantized_weight(s_x)
        x_scaled = x / s_x
        x_int = ste(x_scaled, torch.round(x_scaled.detach()))
        acc = F.linear(x_int, w_int,
                       self.bias_int(s_acc) if self.bias is not None else None)
        return acc * s_acc, s_acc


class IntGELU(nn.Module):
    """i-GELU on 16-bit integers of a per-tensor scale, fused with its output quantizer, as the engine runs it
    (float GELU, then `out_act`, when disabled). The int32 i-GELU result (up to 2**30) goes to the requantization
    as an integer, never through a float."""

    def __init__(self, quant_mode: bool = False, backend: str = "auto"):
        super().__init__()
        self.quant_mode, self.backend = quant_mode, backend

    def forward(self, x: torch.Tensor, s: torch.Tensor | None, out_act: QuantAct) -> Scaled:
        y = F.gelu(x)
        if not self.quant_mode or s is None or not out_act.quant_mode:
            return out_act(y)
        params, s_g = kernels.gelu_params(s)
        g = kernels.gelu(to_int(x, s), params, backend=self.backend)
        if self.training:  # the range of the i-GELU values themselves
            out_act.observe(g.float() * s_g)
        q = kernels.requantize(g, *out_act.multiplier(s_g), out_act.bits, backend=self.backend)
        s_out = out_act.scale()
        return ste(y, q.float() * s_out), s_out


class IntSoftmax(nn.Module):
    """i-softmax with an unsigned `bits`-bit output of scale 2**-bits (float softmax when disabled).

    mask: [B, S] with 1 for keys to attend to, 0 for padding (or None).
    """

    MASK_INT = -(2**30)

    def __init__(self, bits: int = 8, quant_mode: bool = False, backend: str = "auto"):
        super().__init__()
        self.bits, self.quant_mode, self.backend = bits, quant_mode, backend

    def forward(self, x: torch.Tensor, s: torch.Tensor | None, mask: torch.Tensor | None) -> Scaled:
        x_masked = x if mask is None else x.masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        y = torch.softmax(x_masked, dim=-1)
        if not self.quant_mode or s is None:
            return y, None
        mask_int = None if mask is None else ((1 - mask.int()) * self.MASK_INT).int()
        p = kernels.softmax(to_int(x, s), kernels.softmax_params(s), mask_int, self.bits, backend=self.backend)
        s_out = torch.full((1,), 2.0**-self.bits, device=x.device)
        return ste(y, p.float() * s_out), s_out


class IntLayerNorm(nn.LayerNorm):
    """i-LayerNorm fused with its output quantizer: integer in, `out_act.bits`-bit integer out.

    The output scale comes from `out_act`'s range, observed on the float LayerNorm output in training.
    """

    def __init__(self, dim: int, eps: float, quant_mode: bool = False, backend: str = "auto"):
        super().__init__(dim, eps=eps)
        self.quant_mode, self.backend = quant_mode, backend

    def params(self, s_in: torch.Tensor, s_out: torch.Tensor, bits: int):
        return kernels.layernorm_params(s_in, self.weight.detach(), self.bias.detach(), self.eps, s_out, bits)

    def forward(self, x: torch.Tensor, s: torch.Tensor | None, out_act: QuantAct) -> Scaled:
        y = super().forward(x)
        if not self.quant_mode or s is None or not out_act.quant_mode:
            return out_act(y)
        if self.training:
            out_act.observe(y)
        s_out = out_act.scale()
        q = kernels.layernorm(to_int(x, s), *self.params(s, s_out, out_act.bits), out_act.bits,
                              backend=self.backend)
        return ste(y, q.float() * s_out), s_out
