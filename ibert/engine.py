"""The integer-only engine: a trained fake-quant model converted once into int8 weights, int32 biases,
dyadic multipliers and integer constants, running through `kernels` with no float op between the embedding
lookup and the task head.

    engine = convert_to_integer(model)        # model: any IBert* class, quant_mode=True, calibrated
    engine(input_ids=..., attention_mask=...) # same outputs as the model's, from integers
    save_integer(engine, "dir"); load_integer("dir")

The task heads (pooler, classifiers, LM head) stay in float: they read the dequantized last hidden state.
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

import kernels
from kernels._cpu import resolve_cpu_backend
from kernels.gelu import NUM_PARAMS as GELU_PARAMS
from kernels.layer import encoder_layer_cpp
from kernels.softmax import NUM_PARAMS as SOFTMAX_PARAMS
from ibert import atomic, modeling
from ibert.configuration import IBertConfig
from ibert.quant import IntSoftmax, QuantAct, QuantLinear, qmax

FORMAT = "ibert-integer-engine"
FORMAT_VERSION = 1
WEIGHTS_NAME = "integer_model.safetensors"
CONFIG_NAME = "config.json"


def _int_weight(linear: QuantLinear | nn.Embedding, scale: torch.Tensor, bits: int) -> torch.Tensor:
    s = scale.reshape(-1, 1)
    return torch.clamp(torch.round(linear.weight.detach() / s), -qmax(bits), qmax(bits)).to(torch.int8)


def _int_bias(linear: QuantLinear, s_acc: torch.Tensor) -> torch.Tensor:
    return linear.bias_int(s_acc).detach().round().to(torch.int32)


class _Requant(nn.Module):
    """A dyadic multiplier (m, e) as buffers."""

    def __init__(self, n: int = 1):
        super().__init__()
        self.register_buffer("m", torch.zeros(n, dtype=torch.int32))
        self.register_buffer("e", torch.zeros(n, dtype=torch.int32))

    def set(self, m: torch.Tensor, e: torch.Tensor) -> "_Requant":
        self.m, self.e = m.reshape(-1).clone(), e.reshape(-1).clone()
        return self


class _IntLinear(nn.Module):
    """int8 weight [N, K], int32 bias [N] and the output requantization (per channel)."""

    def __init__(self, n: int, k: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(n, k, dtype=torch.int8))
        self.register_buffer("bias", torch.zeros(n, dtype=torch.int32))
        self.out = _Requant(n)
        self._packed: kernels.PackedWeight | None = None

    def packed(self) -> kernels.PackedWeight:
        """The weight in the layout this host's kernel reads (`kernels.pack_weight`): made on first use, and
        again after the weight is replaced (conversion, loading, a move to another device) or changed in place."""
        if self._packed is None or not self._packed.is_current(self.weight):
            self._packed = kernels.pack_weight(self.weight)
        return self._packed

    def set(self, linear: QuantLinear, s_x: torch.Tensor, act: QuantAct) -> torch.Tensor:
        """Fill from a fake-quant linear fed at scale s_x and requantized by `act`; return act's scale."""
        s_acc, self.weight = linear.integer_weight(s_x)
        self.bias = _int_bias(linear, s_acc)
        self.out.set(*act.multiplier(s_acc))
        return act.scale()


class _IntLayerNorm(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("eps", torch.zeros(1, dtype=torch.int64))
        self.register_buffer("beta", torch.zeros(n, dtype=torch.int64))
        self.out = _Requant(n)

    def set(self, ln, s_in: torch.Tensor, act: QuantAct) -> torch.Tensor:
        s_out = act.scale()
        eps, m, e, beta = ln.params(s_in, s_out, act.bits)
        self.eps, self.beta = eps.reshape(1).clone(), beta.clone()
        self.out.set(m, e)
        return s_out

    def forward(self, x: torch.Tensor, bits: int, backend: str) -> torch.Tensor:
        return kernels.layernorm(x, self.eps, self.out.m, self.out.e, self.beta, bits, backend=backend)


class IntegerLayer(nn.Module):
    def __init__(self, config: IBertConfig):
        super().__init__()
        H, I = config.hidden_size, config.intermediate_size
        self.heads, self.bits, self.ln_bits = config.num_attention_heads, config.act_bits, config.ln_input_bits
        self.softmax_bits, self.gelu_input_bits = config.softmax_bits, config.gelu_input_bits
        self.qkv = _IntLinear(3 * H, H)
        self.register_buffer("softmax_params", torch.zeros(SOFTMAX_PARAMS, dtype=torch.int64))
        self.ctx_out = _Requant()
        self.attn_dense = _IntLinear(H, H)
        C = H if config.smoothquant else 1  # scales per LayerNorm output: the residuals' multipliers
        self.attn_residual = _Requant(C)
        self.attn_ln = _IntLayerNorm(H)
        self.ffn_in = _IntLinear(I, H)
        self.register_buffer("gelu_params", torch.zeros(GELU_PARAMS, 1, dtype=torch.int64))
        self.gelu_out = _Requant(I if config.smoothquant_gelu else 1)  # per i-GELU output channel with smoothquant_gelu
        self.ffn_out = _IntLinear(H, I)
        self.ffn_residual = _Requant(C)
        self.ffn_ln = _IntLayerNorm(H)
        self._cpp_sources = self._buffer_sources()

    @torch.no_grad()
    def set(self, layer: modeling.IBertLayer, s_x: torch.Tensor) -> torch.Tensor:
        """Fill from a fake-quant layer whose input has scale s_x; return the output scale."""
        att, so = layer.attention.self, layer.attention.output
        scales = []
        w, b, m, e = [], [], [], []
        for lin, act in ((att.query, att.query_activation), (att.key, att.key_activation),
                         (att.value, att.value_activation)):
            part = _IntLinear(*lin.weight.shape)
            scales.append(part.set(lin, s_x, act))
            w.append(part.weight), b.append(part.bias), m.append(part.out.m), e.append(part.out.e)
        self.qkv.weight, self.qkv.bias = torch.cat(w), torch.cat(b)
        self.qkv.out.set(torch.cat(m), torch.cat(e))
        s_q, s_k, s_v = scales
        s_scores = s_q * s_k / math.sqrt(att.head_size)  # as in IBertSelfAttention.forward
        self.softmax_params = kernels.softmax_params(s_scores)
        s_p = torch.full((1,), 2.0**-att.softmax.bits, device=s_x.device)
        self.ctx_out.set(*att.output_activation.multiplier(s_p * s_v))
        s_ctx = att.output_activation.scale()
        s_a = self._set_output(so, s_ctx, s_x, self.attn_dense, self.attn_residual, self.attn_ln)
        inter = layer.intermediate
        s16 = self.ffn_in.set(inter.dense, s_a, inter.gelu_input_act)
        self.gelu_params, s_g = kernels.gelu_params(s16)
        self.gelu_out.set(*inter.output_activation.multiplier(s_g))
        s_g8 = inter.output_activation.scale()
        return self._set_output(layer.output, s_g8, s_a, self.ffn_out, self.ffn_residual, self.ffn_ln)

    @staticmethod
    def _set_output(block: modeling.IBertSelfOutput, s_in, s_res, dense: _IntLinear, residual: _Requant,
                    ln: _IntLayerNorm) -> torch.Tensor:
        s22 = dense.set(block.dense, s_in, block.ln_input_act)
        residual.set(*block.ln_input_act.multiplier(s_res))
        return ln.set(block.LayerNorm, s22, block.output_activation)

    def cpp_buffers(self) -> dict[str, torch.Tensor]:
        """The integer buffers of `kernels.layer.encoder_layer_cpp`, by its names."""
        named = {name: module._buffers[attr] for name, (module, attr) in self._cpp_sources.items()}
        named["gelu.params"] = named["gelu.params"].reshape(-1)
        return named

    def _buffer_sources(self) -> dict[str, tuple[nn.Module, str]]:
        """Where each of `cpp_buffers` lives (module, buffer name): found once, read on every call (a forward's
        attribute lookups through the module tree cost ~0.1 ms a layer)."""
        sources = {}
        for name, lin in (("qkv", self.qkv), ("attention_output", self.attn_dense), ("ffn_in", self.ffn_in),
                          ("ffn_out", self.ffn_out)):
            sources |= {f"{name}.bias": (lin, "bias"), f"{name}.m": (lin.out, "m"), f"{name}.e": (lin.out, "e")}
        for name, r in (("context", self.ctx_out), ("attention_residual", self.attn_residual),
                        ("gelu_output", self.gelu_out), ("ffn_residual", self.ffn_residual)):
            sources |= {f"{name}.m": (r, "m"), f"{name}.e": (r, "e")}
        for name, ln in (("attention_layernorm", self.attn_ln), ("ffn_layernorm", self.ffn_ln)):
            sources |= {f"{name}.eps": (ln, "eps"), f"{name}.m": (ln.out, "m"), f"{name}.e": (ln.out, "e"),
                        f"{name}.beta": (ln, "beta")}
        return sources | {"softmax.params": (self, "softmax_params"), "gelu.params": (self, "gelu_params")}

    def forward(self, x: torch.Tensor, mask: torch.Tensor, head_mask: torch.Tensor | None, backend: str,
                keep_probs: bool = False):
        """x: [B, S, H] int8; mask: [B, S] int32 additive; head_mask: [heads] uint8 or None.
        Returns [B, S, H] int8 and, with keep_probs, the attention probabilities [B, heads, S, S] uint8."""
        if resolve_cpu_backend(backend, x) == "cpp":
            weights = [self.qkv.packed(), self.attn_dense.packed(), self.ffn_in.packed(), self.ffn_out.packed()]
            return encoder_layer_cpp(x, mask, head_mask, weights, self.cpp_buffers(), self.heads, self.bits,
                                     self.ln_bits, self.gelu_input_bits, self.softmax_bits, keep_probs)
        B, S, H = x.shape
        x2 = x.reshape(B * S, H)
        qkv = kernels.int8_matmul(x2, self.qkv.packed(), self.qkv.bias, self.qkv.out.m, self.qkv.out.e, self.bits,
                                  backend=backend)
        ctx, probs = kernels.attention(qkv.view(B, S, 3 * H), self.heads, self.softmax_params, self.ctx_out.m,
                                       self.ctx_out.e, mask, head_mask, self.softmax_bits, self.bits,
                                       return_probs=keep_probs, backend=backend)
        ctx = ctx.reshape(B * S, H)
        y = kernels.int8_matmul(ctx, self.attn_dense.packed(), self.attn_dense.bias, self.attn_dense.out.m,
                                self.attn_dense.out.e, self.ln_bits, x2, self.attn_residual.m, self.attn_residual.e,
                                backend=backend)
        a = self.attn_ln(y, self.bits, backend)
        g = kernels.int8_matmul_gelu(a, self.ffn_in.packed(), self.ffn_in.bias, self.ffn_in.out.m, self.ffn_in.out.e,
                                     self.gelu_params, self.gelu_out.m, self.gelu_out.e, self.gelu_input_bits,
                                     self.bits, backend=backend)
        y = kernels.int8_matmul(g, self.ffn_out.packed(), self.ffn_out.bias, self.ffn_out.out.m, self.ffn_out.out.e,
                                self.ln_bits, a, self.ffn_residual.m, self.ffn_residual.e, backend=backend)
        return self.ffn_ln(y, self.bits, backend).view(B, S, H), probs


class IntegerIBertModel(nn.Module):
    """Drop-in for `IBertModel` inside the task classes: integer embeddings and encoder, float pooler."""

    def save_pretrained(self, save_directory: str | os.PathLike, **_) -> None:
        """The engine's own format (`save_integer`), as the task classes' `save_pretrained` of an engine."""
        save_integer(self, save_directory)

    def __init__(self, config: IBertConfig, add_pooling_layer: bool):
        super().__init__()
        self.config = config
        H = config.hidden_size
        self.register_buffer("word", torch.zeros(config.vocab_size, H, dtype=torch.int8))
        self.register_buffer("token_type", torch.zeros(config.type_vocab_size, H, dtype=torch.int8))
        self.register_buffer("position", torch.zeros(config.max_position_embeddings, H, dtype=torch.int8))
        self.type_add, self.type_res = _Requant(), _Requant()
        self.pos_add, self.pos_res = _Requant(), _Requant()
        self.emb_ln = _IntLayerNorm(H)
        self.layers = nn.ModuleList([IntegerLayer(config) for _ in range(config.num_hidden_layers)])
        L = config.num_hidden_layers + 1  # each layer's output scale: [H] per channel (smoothquant), else one
        self.register_buffer("hidden_scales", torch.ones((L, H) if config.smoothquant else (L,)))
        self.pooler = modeling.IBertPooler(config) if add_pooling_layer else None

    @torch.no_grad()
    def pack(self) -> "IntegerIBertModel":
        """Every linear weight in the layout of this host's kernel, now (conversion and loading call it; after a
        move to another device each packs again on first use)."""
        for layer in self.layers:
            for linear in (layer.qkv, layer.attn_dense, layer.ffn_in, layer.ffn_out):
                linear.packed()
        return self

    def set(self, model: modeling.IBertModel) -> "IntegerIBertModel":
        emb = model.embeddings
        scales = {}
        for name, table in (("word", emb.word_embeddings), ("token_type", emb.token_type_embeddings),
                            ("position", emb.position_embeddings)):
            scales[name] = table.weight_scale()
            setattr(self, name, _int_weight(table, scales[name], table.bits))
        self.type_add.set(*emb.embeddings_act1.multiplier(scales["word"]))
        self.type_res.set(*emb.embeddings_act1.multiplier(scales["token_type"]))
        s1 = emb.embeddings_act1.scale()
        self.pos_add.set(*emb.embeddings_act2.multiplier(s1))
        self.pos_res.set(*emb.embeddings_act2.multiplier(scales["position"]))
        s = self.emb_ln.set(emb.LayerNorm, emb.embeddings_act2.scale(), emb.output_activation)
        hidden_scales = [s]
        for int_layer, layer in zip(self.layers, model.encoder.layer):
            s = int_layer.set(layer, s)
            hidden_scales.append(s)
        self.hidden_scales = torch.stack([h.reshape(-1) for h in hidden_scales]).float().reshape(
            self.hidden_scales.shape)
        if self.pooler is not None:
            self.pooler.load_state_dict(model.pooler.state_dict())
        return self

    @property
    def backend(self) -> str:
        return self.config.backend

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
               position_ids: torch.Tensor, head_mask: torch.Tensor | None = None, keep: bool = False):
        """Integers only. input_ids etc.: [B, S] integer tensors. Returns the last hidden state [B, S, H] int8
        and, with keep=True, every layer's int8 output and uint8 attention probabilities."""
        bk, c = self.backend, self.config
        e = kernels.requantize(self.word[input_ids].int(), self.type_add.m, self.type_add.e, c.embedding_act_bits,
                               self.token_type[token_type_ids], self.type_res.m, self.type_res.e, backend=bk)
        e = kernels.requantize(e, self.pos_add.m, self.pos_add.e, c.embedding_act_bits,
                               self.position[position_ids], self.pos_res.m, self.pos_res.e, backend=bk)
        x = self.emb_ln(e, c.act_bits, bk)
        mask = ((1 - attention_mask.int()) * IntSoftmax.MASK_INT).int()
        hidden, probs = [x], []
        for i, layer in enumerate(self.layers):
            x, p = layer(x, mask, None if head_mask is None else head_mask[i], bk, keep)
            if keep:
                hidden.append(x)
                probs.append(p)
        return (x, hidden, probs) if keep else x

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        if inputs_embeds is not None:
            raise ValueError("the integer engine takes input_ids, not inputs_embeds")
        attention_mask, token_type_ids, position_ids = modeling.prepare_inputs(
            self.config, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        if head_mask is not None:
            hm = modeling.head_mask_per_layer(self.config, head_mask)
            if not torch.isin(hm, torch.tensor([0.0, 1.0], device=hm.device)).all():
                raise ValueError("the integer engine supports head masks of zeros and ones only")
            head_mask = hm.reshape(self.config.num_hidden_layers, -1).to(torch.uint8)
        keep = bool(output_attentions or output_hidden_states)
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, keep)
        x, hidden, probs = out if keep else (out, None, None)
        # The float boundary: the task head reads dequantized values.
        last = x.float() * self.hidden_scales[-1]
        pooled = self.pooler(last) if self.pooler is not None else None
        hidden_f = None
        if output_hidden_states:
            hidden_f = tuple(h.float() * s for h, s in zip(hidden, self.hidden_scales))
        attn_f = tuple(p.float() * 2.0**-self.config.softmax_bits for p in probs) if output_attentions else None
        if return_dict is False:
            return tuple(v for v in (last, pooled, hidden_f, attn_f) if v is not None)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden_f,
                                          attentions=attn_f)


def _check_convertible(model: modeling.IBertPreTrainedModel) -> None:
    cfg = model.config
    if not cfg.quant_mode:
        raise ValueError("convert_to_integer needs a fake-quant model (quant_mode=True), calibrated or trained")
    if cfg.force_dequant != "none":
        raise ValueError(f"an integer-only engine needs every nonlinearity in integers: force_dequant='none', "
                         f"got {cfg.force_dequant!r}")
    if cfg.hidden_act != "gelu":
        raise ValueError(f"the integer engine implements hidden_act='gelu' only, got {cfg.hidden_act!r}")
    stale = [n for n, m in model.named_modules() if isinstance(m, QuantAct) and m.quant_mode
             and bool((m.x_min == m.x_max).all())]
    if stale:
        raise ValueError(f"activation ranges were never observed (run calibration or QAT first): {stale[:3]}...")
    broken = [n for n, m in model.named_modules() if isinstance(m, QuantAct) and m.quant_mode
              and not bool(torch.isfinite(torch.cat([m.x_min, m.x_max])).all())]
    if broken:
        raise ValueError(f"activation ranges are NaN or infinite (a diverged QAT?): {broken[:3]}")


def convert_to_integer(model: modeling.IBertPreTrainedModel) -> modeling.IBertPreTrainedModel:
    """A copy of `model` (any IBert* class) whose encoder is the integer engine; the model is unchanged."""
    _check_convertible(model)
    engine = copy.deepcopy(model).eval()
    base = engine.ibert if hasattr(engine, "ibert") else engine
    integer = IntegerIBertModel(engine.config, base.pooler is not None).to(_device(model)).set(base).pack()
    if base is engine:
        return integer
    engine.ibert = integer
    return engine


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


TASK_CLASSES = {cls.__name__: cls for cls in (
    modeling.IBertForMaskedLM, modeling.IBertForSequenceClassification, modeling.IBertForMultipleChoice,
    modeling.IBertForTokenClassification, modeling.IBertForQuestionAnswering)}


def integer_dir(name_or_path, hub_kwargs: dict | None = None) -> Path | None:
    """The local directory of the engine that `name_or_path` (a directory, or a hub repository) holds; None if it
    holds none (or the hub cannot be reached)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        return None
    if os.path.isdir(name_or_path):
        return Path(name_or_path) if (Path(name_or_path) / WEIGHTS_NAME).is_file() else None
    from transformers.utils import cached_file

    fetch = lambda f: cached_file(str(name_or_path), f, _raise_exceptions_for_missing_entries=False,
                                  **(hub_kwargs or {}))
    try:
        weights = fetch(WEIGHTS_NAME)  # a float checkpoint has none: one lookup, not two
        return Path(weights).parent if weights and fetch(CONFIG_NAME) else None
    except (OSError, ValueError):
        return None


def save_integer(engine: nn.Module, directory: str | os.PathLike) -> None:
    """Write the engine (integer buffers and float heads) as safetensors plus a config, atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in engine.state_dict().items()}
    config = engine.config.to_dict()
    config.update(ibert_format=FORMAT, ibert_format_version=FORMAT_VERSION, ibert_class=type(engine).__name__,
                  ibert_add_pooling_layer=_integer_part(engine).pooler is not None)
    atomic.write_file(directory / WEIGHTS_NAME, lambda p: save_file(_untie(tensors), p, metadata={"format": FORMAT}))
    atomic.write_file(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2, sort_keys=True)))


def load_integer(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load an engine written by `save_integer`; a clear ValueError for anything missing, corrupt or mismatched."""
    directory = Path(directory)
    cfg_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise ValueError(f"not an integer engine checkpoint: {p} is missing")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt integer engine config {cfg_path}: {exc}") from exc
    if raw.get("ibert_format") != FORMAT or raw.get("ibert_format_version") != FORMAT_VERSION:
        raise ValueError(f"{cfg_path} is not a version-{FORMAT_VERSION} {FORMAT} checkpoint")
    cls_name, pooling = raw.pop("ibert_class"), raw.pop("ibert_add_pooling_layer")
    raw.pop("ibert_format"), raw.pop("ibert_format_version")
    config = IBertConfig.from_dict(raw)
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"corrupt integer engine weights {weights_path}: {exc}") from exc
    if cls_name == "IntegerIBertModel":
        engine = IntegerIBertModel(config, pooling)
    elif cls_name in TASK_CLASSES:
        engine = TASK_CLASSES[cls_name](config)
        engine.ibert = IntegerIBertModel(config, pooling)
    else:
        raise ValueError(f"{cfg_path}: unknown engine class {cls_name!r}; one of {['IntegerIBertModel', *TASK_CLASSES]}")
    expected = engine.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"integer engine checkpoint {weights_path} does not match {cls_name}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in expected.items():
        if v.shape != tensors[k].shape or v.dtype != tensors[k].dtype:
            raise ValueError(f"integer engine checkpoint {weights_path}: {k} is {tuple(tensors[k].shape)} "
                             f"{tensors[k].dtype}, expected {tuple(v.shape)} {v.dtype}")
    engine.load_state_dict(tensors, strict=True)
    engine = engine.to(device).eval()
    _integer_part(engine).pack()
    return engine


def _integer_part(engine: nn.Module) -> IntegerIBertModel:
    return engine if isinstance(engine, IntegerIBertModel) else engine.ibert


def _untie(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied LM-head weights): give each name its own copy."""
    seen, out = set(), {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out
