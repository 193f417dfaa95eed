"""A run's identity: the name of its directory, and the config values each of its stages depends on.

A stage (fp32, qat, integer) records its values in `<run dir>/<stage>/identity.json` when it starts. Started
again in the same directory (to resume after a kill, or to skip a finished stage), it compares them with the
current config: a difference is an error naming the keys, never a silent reuse of a model trained otherwise.
"""
from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ibert import atomic

CONFIG_DIR = str(importlib.resources.files("ibert.configs"))  # configs/ (installed: ibert.configs)
IDENTITY = "identity.json"
# What every training stage depends on (dotted keys of the resolved config).
_TRAINING_KEYS = ("task.name", "model.name_or_path", "seed", "recipe.batch_size", "recipe.weight_decay",
                  "recipe.adam_betas", "recipe.adam_eps", "recipe.warmup_ratio", "recipe.max_grad_norm",
                  "recipe.group_by_length", "recipe.max_seq_length", "recipe.max_train_samples")
_STAGE_KEYS = {
    "fp32": ("recipe.lr", "recipe.epochs", "recipe.max_steps"),
    "qat": ("recipe.qat_lr", "recipe.qat_epochs", "recipe.qat_max_steps", "recipe.distill", "force_dequant",
            "init_from", "recipe.smoothquant_alpha", "recipe.smoothquant_gelu_alpha"),
    "ptq": ("recipe.calibration_samples", "force_dequant", "init_from", "recipe.smoothquant_alpha",
            "recipe.smoothquant_gelu_alpha"),
}
_SMOOTHING = ("recipe.smoothquant_alpha", "recipe.smoothquant_gelu_alpha")
_ADDED_LATER = ("recipe.smoothquant_gelu_alpha",)  # recorded only when set: older stages keep their identity


def path_name(quant_mode: bool, name: str) -> str:
    """The path a run takes: `quant_mode=true` given on its own (path fp32) is the QAT path."""
    return "qat" if quant_mode and name == "fp32" else name


def overrides_suffix(override_dirname: str) -> str:
    """`,key=value,...` for the overrides that shape a run beyond its name (Hydra's override_dirname), or ''."""
    return f",{override_dirname}" if override_dirname else ""


def register_resolvers() -> None:
    for name, fn in (("ibert.path_name", path_name), ("ibert.overrides_suffix", overrides_suffix)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def stage_identity(cfg: DictConfig, stage: str, world_size: int = 1, depends_on: dict | None = None) -> dict:
    """The values `stage` ('fp32', 'qat' or 'ptq') depends on, with the number of data-parallel processes (each has its
    own dropout stream); `depends_on`: the identity of the stage it starts from."""
    values = {key: OmegaConf.select(cfg, key) for key in (*_TRAINING_KEYS, *_STAGE_KEYS[stage])}
    values = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in values.items()}
    values = {k: v for k, v in values.items() if v is not None or k not in _ADDED_LATER}
    if any(values.get(k) is not None for k in _SMOOTHING):  # QAT then starts from calibrated ranges
        values["recipe.calibration_samples"] = OmegaConf.select(cfg, "recipe.calibration_samples")
    if any(isinstance(values.get(k), list) for k in _SMOOTHING):  # chosen on held-out training examples
        values["recipe.selection_samples"] = OmegaConf.select(cfg, "recipe.selection_samples")
    values["world_size"] = world_size
    if depends_on:
        values.update({f"from.{k}": v for k, v in depends_on.items()})
    return values


def check_identity(stage_dir: Path, identity: dict) -> None:
    """Record `identity` for a new stage; for one that was started before, raise if it was started otherwise."""
    stage_dir = Path(stage_dir)
    record = stage_dir / IDENTITY
    if record.is_file():
        try:
            old = json.loads(record.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"corrupt stage record {record}: {exc}") from exc
        differ = sorted(k for k in identity.keys() | old.keys() if old.get(k) != identity.get(k))
        if differ:
            changes = ", ".join(f"{k}: {old.get(k)!r} there, {identity.get(k)!r} now" for k in differ)
            raise ValueError(f"{stage_dir} was run with another config ({changes}). Give this run its own "
                             f"directory (hydra.run.dir=...) or the values it was run with.")
        return
    if stage_dir.exists() and any(stage_dir.iterdir()):
        raise ValueError(f"{stage_dir} holds a stage with no record of its config ({IDENTITY}): it cannot be "
                         f"resumed safely. Remove it or give this run another directory.")
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_file(record, lambda p: Path(p).write_text(json.dumps(identity, indent=2, sort_keys=True)))
