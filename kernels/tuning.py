"""Tile configurations for the Triton GEMM: defaults per architecture, tuned ones when present.

Tuned configurations come from `scripts/autotune.py` on a GPU and live in `kernels/tuned/<arch>.json`
(or the file named by $IBERT_TUNED_CONFIGS): {"gemm": {"<M>,<N>,<K>": {BLOCK_M, ..., num_stages}}}.
A shape without an entry takes the entry of the same (N, K) with the nearest M, else the default.
A malformed file is reported with a warning and ignored.
"""
from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path

import torch

CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
TUNED_DIR = Path(__file__).parent / "tuned"

# int8 tl.dot needs BLOCK_K >= 32 on NVIDIA; 128x128 tiles need 8 warps to hold the int64 epilogue unspilled.
_GEMM_DEFAULTS = {
    "sm80": dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
    "sm90": dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3),
    "interpreter": dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=1),
}


def arch_name(device: torch.device) -> str:
    """'sm80', 'sm90', ... for a CUDA device; 'interpreter' for the CPU (TRITON_INTERPRET=1)."""
    if device.type != "cuda":
        return "interpreter"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def validate_config(cfg: object) -> dict:
    """A GEMM config dict with exactly CONFIG_KEYS as positive ints (powers of two for the blocks)."""
    if not isinstance(cfg, dict) or set(cfg) != set(CONFIG_KEYS):
        raise ValueError(f"a GEMM config needs exactly the keys {CONFIG_KEYS}, got {cfg!r}")
    for k, v in cfg.items():
        if not isinstance(v, int) or v < 1 or (k.startswith("BLOCK") and v & (v - 1)):
            raise ValueError(f"bad value {k}={v!r} in GEMM config")
    if cfg["BLOCK_K"] < 32 or min(cfg["BLOCK_M"], cfg["BLOCK_N"]) < 16:
        raise ValueError(f"int8 dot needs BLOCK_K >= 32 and BLOCK_M, BLOCK_N >= 16: {cfg}")
    return cfg


def parse_tuned(text: str) -> dict[tuple[int, int, int], dict]:
    """{(M, N, K): config} from a tuned-config file's text; ValueError naming the problem otherwise."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("gemm"), dict):
        raise ValueError('expected {"gemm": {"M,N,K": config}}')
    out = {}
    for key, cfg in data["gemm"].items():
        try:
            shape = tuple(int(x) for x in key.split(","))
        except ValueError as exc:
            raise ValueError(f"bad shape key {key!r}: expected 'M,N,K'") from exc
        if len(shape) != 3:
            raise ValueError(f"bad shape key {key!r}: expected 'M,N,K'")
        out[shape] = validate_config(cfg)
    return out


@functools.lru_cache(maxsize=None)
def tuned_configs(arch: str) -> dict[tuple[int, int, int], dict]:
    """The tuned GEMM configs for an architecture ({} when there are none or the file is malformed)."""
    path = Path(os.environ.get("IBERT_TUNED_CONFIGS") or TUNED_DIR / f"{arch}.json")
    if not path.is_file():
        return {}
    try:
        return parse_tuned(path.read_text())
    except (ValueError, json.JSONDecodeError) as exc:
        warnings.warn(f"ignoring malformed tuned-config file {path} ({exc}); using the default configurations")
        return {}


def gemm_config(M: int, N: int, K: int, device: torch.device) -> dict:
    """GEMM tile configuration for this shape and device: tuned if available, else the default."""
    arch = arch_name(device)
    tuned = tuned_configs(arch)
    if (M, N, K) in tuned:
        return dict(tuned[(M, N, K)])
    same_nk = [m for (m, n, k) in tuned if (n, k) == (N, K)]
    if same_nk:
        nearest = min(same_nk, key=lambda m: abs(m - M))
        return dict(tuned[(nearest, N, K)])
    if arch not in _GEMM_DEFAULTS:
        arch = "sm90" if arch >= "sm90" else "sm80"
    cfg = dict(_GEMM_DEFAULTS[arch])
    if M <= 64 and arch != "interpreter":
        cfg.update(BLOCK_M=64)
    return cfg
