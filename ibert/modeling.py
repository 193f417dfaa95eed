"""I-BERT models with HuggingFace's API and checkpoint layout: fp32 (quant_mode=False) and fake quantization
(quant_mode=True, QAT). `ibert.engine.IntegerIBert` converts a trained fake-quant model to integers.

Differences from transformers' IBert that are ours on purpose (see the README): each layer receives the
scale of the previous layer's output; the two embedding sums use their own quantizers (embeddings_act1/2);
the FFN output is requantized to 16 bits before i-GELU (`intermediate.gelu_input_act`); LayerNorm outputs
8 bits directly; no redundant `pre_intermediate_act` / `pre_output_act` requantizations; 8-bit ranges are
symmetric [-127, 127]; all integer math is exact (kernels' references), not float64 simulation.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from ibert.configuration import IBertConfig
from ibert.quant import (EPS_SCALE, IntGELU, IntLayerNorm, IntSoftmax, QuantAct, QuantEmbedding, QuantLinear, Scaled,
                         ScaleProductCap)
from kernels.softmax import MAX_SCALE as SOFTMAX_MAX_SCALE


def position_ids_from_input_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """RoBERTa positions: padding_idx + 1, + 2, ... for real tokens, padding_idx for padding."""
    mask = input_ids.ne(padding_idx).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx


def check_inputs(config: IBertConfig, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds) -> tuple[int, int]:
    """Validate the inputs; return (batch, sequence length)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    shape = tuple(input_ids.shape) if input_ids is not None else tuple(inputs_embeds.shape[:-1])
    if len(shape) != 2:
        raise ValueError(f"input_ids must be [batch, sequence], got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"empty batch: input shape {shape}")
    cfg = config
    if input_ids is not None and input_ids.numel():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"token ids must be in [0, {cfg.vocab_size}) (vocab_size), got ids in [{lo}, {hi}]")
    longest = cfg.max_position_embeddings - cfg.pad_token_id - 1
    if position_ids is None and shape[1] > longest:
        raise ValueError(f"sequence length {shape[1]} exceeds the position table: at most {longest} tokens "
                         f"(max_position_embeddings={cfg.max_position_embeddings}, pad_token_id={cfg.pad_token_id})")
    if position_ids is not None and (int(position_ids.max()) >= cfg.max_position_embeddings or int(position_ids.min()) < 0):
        raise ValueError(f"position_ids must be in [0, {cfg.max_position_embeddings})")
    for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                    ("position_ids", position_ids)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have the shape of input_ids {shape}, got {tuple(t.shape)}")
    if token_type_ids is not None and (int(token_type_ids.max()) >= cfg.type_vocab_size or int(token_type_ids.min()) < 0):
        raise ValueError(f"token_type_ids must be in [0, {cfg.type_vocab_size})")
    return shape

def prepare_inputs(config: IBertConfig, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
    """Validate the inputs and fill in the optional ones as RoBERTa does."""
    B, S = check_inputs(config, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
    device = input_ids.device if input_ids is not None else inputs_embeds.device
    if attention_mask is None:
        attention_mask = torch.ones(B, S, dtype=torch.long, device=device)
    if token_type_ids is None:
        token_type_ids = torch.zeros(B, S, dtype=torch.long, device=device)
    if position_ids is None:
        if input_ids is not None:
            position_ids = position_ids_from_input_ids(input_ids, config.pad_token_id)
        else:
            p = config.pad_token_id
            position_ids = torch.arange(p + 1, S + p + 1, device=device).expand(B, S)
    return attention_mask, token_type_ids, position_ids

def head_mask_per_layer(config: IBertConfig, head_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[heads] or [layers, heads] -> [layers, 1, heads, 1, 1]"""
    if head_mask is None:
        return None
    L, H = config.num_hidden_layers, config.num_attention_heads
    if head_mask.dim() == 1:
        head_mask = head_mask.expand(L, -1)
    if tuple(head_mask.shape) != (L, H):
        raise ValueError(f"head_mask must be [{H}] or [{L}, {H}], got {tuple(head_mask.shape)}")
    return head_mask[:, None, :, None, None].float()


def layernorm_output_act(config: IBertConfig) -> QuantAct:
    """The 8-bit quantizer of a LayerNorm output: a scale per channel with `config.smoothquant`."""
    return QuantAct(config.act_bits, quant_mode=config.quant_mode,
                    channels=config.hidden_size if config.smoothquant else 1)


def _smooth(readers: list[tuple[QuantAct, list[QuantLinear]]], alpha: float) -> None:
    """Set each per-channel quantizer's smoothing to r_c**alpha / w_c**(1 - alpha), normalized to a largest 1:
    r_c its observed range, w_c the largest |w| in column c of the linears that read it (none: r_c)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    for act, linears in readers:
        r = act.channel_range().clamp(min=EPS_SCALE)
        if linears:
            w = torch.cat([lin.weight.abs() for lin in linears]).amax(0).clamp(min=EPS_SCALE)
            r = r**alpha / w ** (1 - alpha)
        act.smoothing.copy_(r / r.max())


class IBertEmbeddings(nn.Module):
    def __init__(self, config: IBertConfig):
        super().__init__()
        q = config.quant_mode
        self.padding_idx = config.pad_token_id
        self.word_embeddings = QuantEmbedding(config.vocab_size, config.hidden_size, config.pad_token_id,
                                              config.weight_bits, quant_mode=q)
        self.token_type_embeddings = QuantEmbedding(config.type_vocab_size, config.hidden_size,
                                                    bits=config.weight_bits, quant_mode=q)
        self.position_embeddings = QuantEmbedding(config.max_position_embeddings, config.hidden_size,
                                                  config.pad_token_id, config.weight_bits, quant_mode=q)
        self.embeddings_act1 = QuantAct(config.embedding_act_bits, quant_mode=q)
        self.embeddings_act2 = QuantAct(config.embedding_act_bits, quant_mode=q)
        self.LayerNorm = IntLayerNorm(config.hidden_size, config.layer_norm_eps,
                                      quant_mode=q and "layernorm" not in config.dequant, backend=config.backend)
        self.output_activation = layernorm_output_act(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, position_ids, inputs_embeds) -> Scaled:
        if inputs_embeds is None:
            inputs_embeds, s_words = self.word_embeddings(input_ids)
        else:
            s_words = None
        types, s_types = self.token_type_embeddings(token_type_ids)
        x, s = self.embeddings_act1(inputs_embeds, s_words, identity=types, s_id=s_types)
        positions, s_pos = self.position_embeddings(position_ids)
        x, s = self.embeddings_act2(x, s, identity=positions, s_id=s_pos)
        x, s = self.LayerNorm(x, s, self.output_activation)
        return self.dropout(x), s


class IBertSelfAttention(nn.Module):
    def __init__(self, config: IBertConfig):
        super().__init__()
        q = config.quant_mode
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        linear = lambda: QuantLinear(config.hidden_size, config.hidden_size, bits=config.weight_bits, quant_mode=q)
        self.query, self.key, self.value = linear(), linear(), linear()
        self.query_activation = QuantAct(config.act_bits, quant_mode=q)
        self.key_activation = QuantAct(config.act_bits, quant_mode=q)
        # i-softmax takes scores of scale s_q s_k / sqrt(d) <= ln2 / 8 (8 steps per ln2); the margin covers float32
        ScaleProductCap(self.query_activation, self.key_activation,
                        SOFTMAX_MAX_SCALE * math.sqrt(self.head_size) * (1 - 1e-5))
        self.value_activation = QuantAct(config.act_bits, quant_mode=q)
        self.softmax = IntSoftmax(config.softmax_bits, quant_mode=q and "softmax" not in config.dequant,
                                  backend=config.backend)
        self.output_activation = QuantAct(config.act_bits, quant_mode=q)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, H] -> [B, heads, S, d]"""
        return x.view(*x.shape[:2], self.num_heads, self.head_size).transpose(1, 2)

    def forward(self, x, s_x, mask, head_mask=None, output_attentions=False):
        (q, s_q), (k, s_k) = self.query(x, s_x), self.key(x, s_x)
        if self.training and self.query_activation.quant_mode:  # both ranges first: their scales are capped together
            self.query_activation.observe(q)
            self.key_activation.observe(k)
            self.query_activation.cap.check()
        q, s_q = self.query_activation.quantize(q, s_q)
        k, s_k = self.key_activation.quantize(k, s_k)
        v, s_v = self.value_activation(*self.value(x, s_x))
        q, k, v = self.heads(q), self.heads(k), self.heads(v)
        # q k^T is exact in fp32 for integer-valued q, k (|sum| < 2**24); the 1/sqrt(d) goes into the scale.
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        s_scores = None if s_q is None else s_q * s_k / math.sqrt(self.head_size)
        probs, s_p = self.softmax(scores, s_scores, mask)
        probs = self.dropout(probs)
        if head_mask is not None:
            probs = probs * head_mask
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(x.shape)
        ctx, s_ctx = self.output_activation(ctx, None if s_p is None else s_p * s_v)
        return ctx, s_ctx, probs if output_attentions else None


class IBertSelfOutput(nn.Module):
    """dense -> dropout -> (+ residual, 22 bits) -> LayerNorm -> 8 bits. Also the FFN's second half."""

    def __init__(self, config: IBertConfig, in_features: int):
        super().__init__()
        q = config.quant_mode
        self.dense = QuantLinear(in_features, config.hidden_size, bits=config.weight_bits, quant_mode=q)
        self.ln_input_act = QuantAct(config.ln_input_bits, quant_mode=q)
        self.LayerNorm = IntLayerNorm(config.hidden_size, config.layer_norm_eps,
                                      quant_mode=q and "layernorm" not in config.dequant, backend=config.backend)
        self.output_activation = layernorm_output_act(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, s_x, residual, s_res) -> Scaled:
        h, s_h = self.dense(x, s_x)
        h, s_h = self.ln_input_act(self.dropout(h), s_h, identity=residual, s_id=s_res)
        return self.LayerNorm(h, s_h, self.output_activation)


class IBertAttention(nn.Module):
    def __init__(self, config: IBertConfig):
        super().__init__()
        self.self = IBertSelfAttention(config)
        self.output = IBertSelfOutput(config, config.hidden_size)

    def forward(self, x, s_x, mask, head_mask=None, output_attentions=False):
        ctx, s_ctx, probs = self.self(x, s_x, mask, head_mask, output_attentions)
        out, s_out = self.output(ctx, s_ctx, x, s_x)
        return out, s_out, probs


class IBertIntermediate(nn.Module):
    """dense -> (16 bits) -> i-GELU -> 8 bits."""

    def __init__(self, config: IBertConfig):
        super().__init__()
        q = config.quant_mode
        int_gelu = q and "gelu" not in config.dequant
        self.dense = QuantLinear(config.hidden_size, config.intermediate_size, bits=config.weight_bits, quant_mode=q)
        self.gelu_input_act = QuantAct(config.gelu_input_bits, quant_mode=int_gelu)
        self.intermediate_act_fn = IntGELU(int_gelu, config.backend) if config.hidden_act == "gelu" else None
        self.float_act = ACT2FN[config.hidden_act]
        self.output_activation = QuantAct(config.act_bits, quant_mode=q,
                                          channels=config.intermediate_size if config.smoothquant_gelu else 1)

    def forward(self, x, s_x) -> Scaled:
        h, s_h = self.dense(x, s_x)
        if self.intermediate_act_fn is None:
            return self.output_activation(self.float_act(h))
        h, s_h = self.gelu_input_act(h, s_h)
        return self.intermediate_act_fn(h, s_h, self.output_activation)


class IBertLayer(nn.Module):
    def __init__(self, config: IBertConfig):
        super().__init__()
        self.attention = IBertAttention(config)
        self.intermediate = IBertIntermediate(config)
        self.output = IBertSelfOutput(config, config.intermediate_size)

    def forward(self, x, s_x, mask, head_mask=None, output_attentions=False):
        a, s_a, probs = self.attention(x, s_x, mask, head_mask, output_attentions)
        h, s_h = self.intermediate(a, s_a)
        out, s_out = self.output(h, s_h, a, s_a)
        return out, s_out, probs


class IBertEncoder(nn.Module):
    def __init__(self, config: IBertConfig):
        super().__init__()
        self.layer = nn.ModuleList([IBertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x, s_x, mask, head_mask=None, output_attentions=False, output_hidden_states=False):
        hidden, attentions = ((x,) if output_hidden_states else None), (() if output_attentions else None)
        for i, layer in enumerate(self.layer):
            x, s_x, probs = layer(x, s_x, mask, None if head_mask is None else head_mask[i], output_attentions)
            if output_hidden_states:
                hidden += (x,)
            if output_attentions:
                attentions += (probs,)
        return x, s_x, hidden, attentions


class IBertPooler(nn.Module):
    """Float head: dense + tanh of the first token."""

    def __init__(self, config: IBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


class IBertPreTrainedModel(PreTrainedModel):
    config_class = IBertConfig
    base_model_prefix = "ibert"
    supports_gradient_checkpointing = False
    # transformers' IBert stores derived integer copies and buffers that this implementation recomputes, and the
    # ranges of two quantizers it does not have (its softmax output is 2**-8 by construction; its LayerNorm outputs
    # through `output_activation`). The ranges of the activations both have (x_min, x_max) are read.
    _keys_to_ignore_on_load_unexpected = [
        r"weight_integer", r"bias_integer", r"fc_scaling_factor", r"act_scaling_factor", r"weight_scaling_factor",
        r"LayerNorm\.shift", r"LayerNorm\.activation\.", r"softmax\.act\.", r"pre_intermediate_act",
        r"pre_output_act", r"position_ids",
    ]
    _keys_to_ignore_on_load_missing = [r"x_min", r"x_max", r"smoothing"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, IBertLMHead):
            module.bias.data.zero_()

    @property
    def is_integer_engine(self) -> bool:
        """True for the result of `convert_to_integer` (or `load_integer`): its encoder is the integer engine."""
        return type(getattr(self, "ibert", None)).__name__ == "IntegerIBertModel"

    def save_pretrained(self, save_directory, *args, **kwargs):
        """HuggingFace's; an integer engine writes its own format (int8 weights, int32 biases, dyadic multipliers),
        which `from_pretrained` and `push_to_hub` then carry as they are."""
        if not self.is_integer_engine:
            return super().save_pretrained(save_directory, *args, **kwargs)
        from ibert.engine import save_integer

        if kwargs.get("push_to_hub"):
            raise ValueError("save the engine, then call engine.push_to_hub(repo_id)")
        save_integer(self, save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """HuggingFace's; a directory written by an integer engine loads as that engine (of this class, or a
        ValueError: never a float model with every weight missing)."""
        from ibert.engine import integer_dir, load_integer

        path = pretrained_model_name_or_path
        directory = integer_dir(path, {k: kwargs[k] for k in ("revision", "cache_dir", "token") if k in kwargs})
        if directory is None:
            return super().from_pretrained(path, *args, **kwargs)
        engine = load_integer(directory, kwargs.get("device_map") or "cpu")
        wanted = cls.__name__ if cls is not IBertModel else "IntegerIBertModel"
        if type(engine).__name__ != wanted:
            raise ValueError(f"{path} holds an integer engine of {type(engine).__name__}, not {cls.__name__}")
        return engine

    def resize_token_embeddings(self, new_num_tokens=None):
        raise NotImplementedError("resize_token_embeddings is not supported for I-BERT (quantized embeddings)")


class IBertModel(IBertPreTrainedModel):
    """The encoder: embeddings, layers, optional pooler. Outputs are float (dequantized in quant mode)."""

    def __init__(self, config: IBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = IBertEmbeddings(config)
        self.encoder = IBertEncoder(config)
        self.pooler = IBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    @torch.no_grad()
    def smooth_layernorm_outputs(self, alpha: float) -> None:
        """SmoothQuant's migration (config.smoothquant), from the observed ranges: each LayerNorm output's
        smoothing per channel c is r_c**alpha / w_c**(1 - alpha), r_c the channel's range and w_c the largest |w|
        in column c of the linears that read it (the last layer's output, read by the float head: r_c). alpha 1
        gives each channel its own range; smaller alphas spare the weights."""
        if not self.config.smoothquant:
            raise ValueError("smooth_layernorm_outputs needs config.smoothquant=True (per-channel LayerNorm outputs)")
        layers = [layer.attention.self for layer in self.encoder.layer]
        readers = [(self.embeddings.output_activation, [layers[0].query, layers[0].key, layers[0].value])]
        for i, layer in enumerate(self.encoder.layer):
            nxt = [layers[i + 1].query, layers[i + 1].key, layers[i + 1].value] if i + 1 < len(layers) else []
            readers += [(layer.attention.output.output_activation, [layer.intermediate.dense]),
                        (layer.output.output_activation, nxt)]
        _smooth(readers, alpha)

    @torch.no_grad()
    def smooth_gelu_outputs(self, alpha: float) -> None:
        """The same migration (config.smoothquant_gelu) for each i-GELU output, read by the FFN's output dense:
        a few channels of it carry outliers (MiniLM: one per layer, ~9x the rest's 99.9th percentile)."""
        if not self.config.smoothquant_gelu:
            raise ValueError("smooth_gelu_outputs needs config.smoothquant_gelu=True (per-channel i-GELU outputs)")
        _smooth([(layer.intermediate.output_activation, [layer.output.dense]) for layer in self.encoder.layer], alpha)

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
        inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs,
    ):
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        attention_mask, token_type_ids, position_ids = prepare_inputs(
            self.config, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        x, s = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        x, s, hidden, attentions = self.encoder(x, s, attention_mask, head_mask_per_layer(self.config, head_mask),
                                                output_attentions, output_hidden_states)
        pooled = self.pooler(x) if self.pooler is not None else None
        if not return_dict:
            return tuple(v for v in (x, pooled, hidden, attentions) if v is not None)
        return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=pooled, hidden_states=hidden,
                                          attentions=attentions)


class IBertLMHead(nn.Module):
    def __init__(self, config: IBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(features))))


class IBertClassificationHead(nn.Module):
    def __init__(self, config: IBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.dropout(features[:, 0, :])
        return self.out_proj(self.dropout(torch.tanh(self.dense(x))))


def encoder_inputs(args: dict) -> dict:
    """The encoder's keyword arguments, picked from a head's forward arguments (`locals()`)."""
    names = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "head_mask", "inputs_embeds",
             "output_attentions", "output_hidden_states")
    return {**{k: args[k] for k in names}, "return_dict": True}


def _tuple(loss, logits, out):
    rest = tuple(v for v in (out.hidden_states, out.attentions) if v is not None)
    return ((loss,) if loss is not None else ()) + (logits,) + rest


class IBertForMaskedLM(IBertPreTrainedModel):
    _tied_weights_keys = {"lm_head.decoder.weight": "ibert.embeddings.word_embeddings.weight$",
                          "lm_head.decoder.bias": "lm_head.bias"}

    def __init__(self, config: IBertConfig):
        super().__init__(config)
        self.ibert = IBertModel(config, add_pooling_layer=False)
        self.lm_head = IBertLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings
        self.lm_head.bias = new_embeddings.bias

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        out = self.ibert(**encoder_inputs(locals()))
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.config.vocab_size), labels.view(-1).to(logits.device))
        if return_dict is False:
            return _tuple(loss, logits, out)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


def sequence_classification_loss(config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HuggingFace's rule: regression for one label, single- or multi-label classification otherwise."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return MSELoss()(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype)) if config.num_labels == 1 \
            else MSELoss()(logits, labels.to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return CrossEntropyLoss()(logits.view(-1, config.num_labels), labels.view(-1))
    return BCEWithLogitsLoss()(logits, labels.to(logits.dtype))


class IBertForSequenceClassification(IBertPreTrainedModel):
    def __init__(self, config: IBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ibert = IBertModel(config, add_pooling_layer=False)
        self.classifier = IBertClassificationHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        out = self.ibert(**encoder_inputs(locals()))
        logits = self.classifier(out.last_hidden_state)
        loss = None if labels is None else sequence_classification_loss(self.config, logits, labels.to(logits.device))
        if return_dict is False:
            return _tuple(loss, logits, out)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)


class IBertForMultipleChoice(IBertPreTrainedModel):
    def __init__(self, config: IBertConfig):
        super().__init__(config)
        self.ibert = IBertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]
        flat = lambda t: None if t is None else t.reshape(-1, t.shape[-1])
        out = self.ibert(input_ids=flat(input_ids), attention_mask=flat(attention_mask),
                         token_type_ids=flat(token_type_ids), position_ids=flat(position_ids), head_mask=head_mask,
                         inputs_embeds=None if inputs_embeds is None else inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:]),
                         output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                         return_dict=True)
        logits = self.classifier(self.dropout(out.pooler_output)).view(-1, choices)
        loss = None if labels is None else CrossEntropyLoss()(logits, labels.to(logits.device))
        if return_dict is False:
            return _tuple(loss, logits, out)
        return MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                         attentions=out.attentions)


class IBertForTokenClassification(IBertPreTrainedModel):
    def __init__(self, config: IBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ibert = IBertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        out = self.ibert(**encoder_inputs(locals()))
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1).to(logits.device))
        if return_dict is False:
            return _tuple(loss, logits, out)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                     attentions=out.attentions)


class IBertForQuestionAnswering(IBertPreTrainedModel):
    def __init__(self, config: IBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ibert = IBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out = self.ibert(**encoder_inputs(locals()))
        start, end = self.qa_outputs(out.last_hidden_state).split(1, dim=-1)
        start, end = start.squeeze(-1).contiguous(), end.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            n = start.size(1)
            ce = CrossEntropyLoss(ignore_index=n)
            loss = (ce(start, start_positions.view(-1).clamp(0, n)) + ce(end, end_positions.view(-1).clamp(0, n))) / 2
        if return_dict is False:
            rest = tuple(v for v in (out.hidden_states, out.attentions) if v is not None)
            return ((loss,) if loss is not None else ()) + (start, end) + rest
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end,
                                            hidden_states=out.hidden_states, attentions=out.attentions)
