"""Tile configurations for the Triton kernels: defaults per architecture, tuned ones when present."""
from __future__ import annotations

import torch

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages); int8 tl.dot needs BLOCK_K >= 32 on NVIDIA.
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


def gemm_config(M: int, N: int, K: int, device: torch.device) -> dict:
    """Default GEMM tile configuration for this shape and device."""
    arch = arch_name(device)
    if arch not in _GEMM_DEFAULTS:
        arch = "sm90" if arch >= "sm90" else "sm80"
    cfg = dict(_GEMM_DEFAULTS[arch])
    if M <= 64 and arch != "interpreter":
        cfg.update(BLOCK_M=64)
    return cfg
