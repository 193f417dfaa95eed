"""Launch configurations for the Triton kernels (defaults per architecture, tuned ones when present), and the C++
CPU kernels' blocking (tuned per CPU).

Tuned configurations come from `scripts/autotune.py` on a GPU and live in `kernels/tuned/<arch>.json`
(or the file named by $IBERT_TUNED_CONFIGS):

    {"gemm": {"<M>,<N>,<K>": {BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages}},
     "softmax": {"<S>": {num_warps}}, "layernorm": {"<N>": {num_warps}},
     "gelu": {"<N>": {BLOCK, num_warps}}, "requantize": {"<N>": {BLOCK, num_warps}},
     "attention": {"<S>": {BLOCK_M, num_warps}}}

Every section is optional. A GEMM shape without an entry takes the entry of the same (N, K) with the nearest
M; a row kernel's size without an entry takes the nearest size's; else the default. A malformed file is
reported with a warning and ignored.

The C++ linear kernel's blocking comes from `scripts/autotune.py --kernels cpu_linear` on the CPU it runs on and
lives in `kernels/tuned/cpu-<vendor>-<family>-<model>.json` (or the file named by $IBERT_CPU_TUNED):

    {"cpu": "<model name>", "linear": {"<isa>": {"<M>,<N>,<K>": {rows, tiles, order}}}}

rows: per micro-tile (`CPU_ROWS`: 16 or 32 on amx_int8, 1 .. 6 on avx512_vnni, 1 .. 5 on avx2); tiles:
micro-tiles per block of rows; order: how the threads take the (block, panel) units, "blocks" (a block's panels in
a row) or "panels" (a panel's blocks in a row). A shape without an entry takes the entry of the same (N, K) with
the nearest M, else the ISA's default (`CPU_DEFAULT_BLOCKING`).
"""
from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path

import torch

CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
# One program per row (softmax, layernorm: the block is the row) or per block of elements (gelu, requantize).
# attention: one program per BLOCK_M queries of one head, the whole row of keys in registers.
ROW_KERNEL_KEYS = {"softmax": ("num_warps",), "layernorm": ("num_warps",),
                   "gelu": ("BLOCK", "num_warps"), "requantize": ("BLOCK", "num_warps"),
                   "attention": ("BLOCK_M", "num_warps")}
TUNED_DIR = Path(__file__).parent / "tuned"
# The rows per micro-tile of the C++ linear kernel on each ISA (gemm_cpu.cpp: max_rows, the AMX tiles' 16 rows) and
# the blocking it takes without a tuned one (default_blocking).
CPU_ROWS = {"amx_int8": (16, 32), "avx512_vnni": tuple(range(1, 7)), "avx2": tuple(range(1, 6))}
CPU_DEFAULT_BLOCKING = {"amx_int8": dict(rows=32, tiles=8, order="panels"),
                        "avx512_vnni": dict(rows=6, tiles=16, order="blocks"),
                        "avx2": dict(rows=5, tiles=16, order="blocks")}
CPU_BLOCKING_KEYS = ("rows", "tiles", "order")
CPU_ORDERS = ("blocks", "panels")

# int8 tl.dot needs BLOCK_K >= 32 on NVIDIA. The int64 requantizing epilogue is register-hungry: in the sweep
# without a GPU (benchmarks/autotune/gemm_aot.md) 64x128x64 with 8 warps is the largest tile that compiles
# without spills for every GEMM variant (plain, accumulator only, uint8 A, GELU) on both sm_80 and sm_90.
_GEMM_DEFAULTS = {
    "sm80": dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
    "sm90": dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
    "interpreter": dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=1),
}
_ELEMENTWISE_DEFAULT = dict(BLOCK=1024, num_warps=4)


def arch_name(device: torch.device) -> str:
    """'sm80', 'sm90', ... for a CUDA device; 'interpreter' for the CPU (TRITON_INTERPRET=1)."""
    if device.type != "cuda":
        return "interpreter"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def _check_values(cfg: dict, what: str) -> dict:
    for k, v in cfg.items():
        if not isinstance(v, int) or v < 1 or ((k.startswith("BLOCK") or k == "num_warps") and v & (v - 1)):
            raise ValueError(f"bad value {k}={v!r} in {what} config")
    return cfg


def validate_config(cfg: object) -> dict:
    """A GEMM config dict with exactly CONFIG_KEYS as positive ints (powers of two for blocks and warps)."""
    if not isinstance(cfg, dict) or set(cfg) != set(CONFIG_KEYS):
        raise ValueError(f"a GEMM config needs exactly the keys {CONFIG_KEYS}, got {cfg!r}")
    _check_values(cfg, "GEMM")
    if cfg["BLOCK_K"] < 32 or min(cfg["BLOCK_M"], cfg["BLOCK_N"]) < 16:
        raise ValueError(f"int8 dot needs BLOCK_K >= 32 and BLOCK_M, BLOCK_N >= 16: {cfg}")
    return cfg


def validate_row_config(kernel: str, cfg: object) -> dict:
    """A row kernel's config: exactly its ROW_KERNEL_KEYS, num_warps in 1..32, BLOCK >= 128."""
    if kernel not in ROW_KERNEL_KEYS:
        raise ValueError(f"unknown kernel {kernel!r}: expected one of {['gemm', *ROW_KERNEL_KEYS]}")
    keys = ROW_KERNEL_KEYS[kernel]
    if not isinstance(cfg, dict) or set(cfg) != set(keys):
        raise ValueError(f"a {kernel} config needs exactly the keys {keys}, got {cfg!r}")
    _check_values(cfg, kernel)
    if cfg["num_warps"] > 32 or cfg.get("BLOCK", 128) < 128:
        raise ValueError(f"{kernel} config needs num_warps <= 32 and BLOCK >= 128: {cfg}")
    if cfg.get("BLOCK_M", 16) < 16:
        raise ValueError(f"{kernel} config needs BLOCK_M >= 16 (an int8 dot): {cfg}")
    return cfg


def _size_key(key: str, parts: int) -> tuple[int, ...]:
    try:
        size = tuple(int(x) for x in key.split(","))
    except ValueError:
        size = ()
    if len(size) != parts:
        raise ValueError(f"bad size key {key!r}: expected {'M,N,K' if parts == 3 else 'an integer'}")
    return size


def parse_tuned(text: str) -> dict[str, dict[tuple[int, ...], dict]]:
    """{kernel: {size: config}} from a tuned-config file's text (sizes: (M, N, K) for the GEMM, (n,) for the
    row kernels); ValueError naming the problem otherwise."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError('expected a JSON object {"gemm": {"M,N,K": config}, "softmax": {"S": config}, ...}')
    out = {}
    for kernel, entries in data.items():
        if kernel == "device":
            continue
        if kernel != "gemm" and kernel not in ROW_KERNEL_KEYS:
            raise ValueError(f"unknown kernel {kernel!r}: expected one of {['gemm', *ROW_KERNEL_KEYS]}")
        if not isinstance(entries, dict):
            raise ValueError(f'"{kernel}" must map sizes to configs')
        if kernel == "gemm":
            out[kernel] = {_size_key(k, 3): validate_config(c) for k, c in entries.items()}
        else:
            out[kernel] = {_size_key(k, 1): validate_row_config(kernel, c) for k, c in entries.items()}
    return out


@functools.lru_cache(maxsize=None)
def tuned_configs(arch: str) -> dict[str, dict[tuple[int, ...], dict]]:
    """The tuned configs for an architecture ({} when there are none or the file is malformed)."""
    path = Path(os.environ.get("IBERT_TUNED_CONFIGS") or TUNED_DIR / f"{arch}.json")
    return _read_tuned(path, parse_tuned, "tuned-config file", "configurations")


def _read_tuned(path: Path, parse, what: str, defaults: str) -> dict:
    """parse(the file's text); {} when there is no file, or with a warning when it is malformed."""
    if not path.is_file():
        return {}
    try:
        return parse(path.read_text())
    except (ValueError, json.JSONDecodeError) as exc:
        warnings.warn(f"ignoring malformed {what} {path} ({exc}); using the default {defaults}")
        return {}


def gemm_config(M: int, N: int, K: int, device: torch.device) -> dict:
    """GEMM tile configuration for this shape and device: tuned if available, else the default."""
    arch = arch_name(device)
    tuned = tuned_configs(arch).get("gemm", {})
    if (M, N, K) in tuned:
        return dict(tuned[(M, N, K)])
    same_nk = [m for (m, n, k) in tuned if (n, k) == (N, K)]
    if same_nk:
        nearest = min(same_nk, key=lambda m: abs(m - M))
        return dict(tuned[(nearest, N, K)])
    return default_gemm_config(arch)


def default_gemm_config(arch: str) -> dict:
    """The shipped GEMM configuration for 'sm80', 'sm90', 'interpreter' (other sm: the nearest of the two)."""
    if arch not in _GEMM_DEFAULTS:
        arch = "sm90" if arch >= "sm90" else "sm80"
    return dict(_GEMM_DEFAULTS[arch])


def launch_config(kernel: str, config: dict | None, n: int, device: torch.device) -> dict:
    """A row kernel's configuration: `config` checked (ValueError naming the problem), or `row_config`'s."""
    return dict(validate_row_config(kernel, config)) if config is not None else row_config(kernel, n, device)


def row_config(kernel: str, n: int, device: torch.device) -> dict:
    """Launch configuration of a row kernel for rows of n elements (the channel count for gelu/requantize):
    tuned for the nearest tuned n if any, else the default (4 warps per row up to 2048 elements, 8 above;
    1024-element blocks for the elementwise kernels)."""
    tuned = tuned_configs(arch_name(device)).get(kernel, {})
    if tuned:
        return dict(tuned[min(tuned, key=lambda size: abs(size[0] - n))])
    if "BLOCK" in ROW_KERNEL_KEYS[kernel]:
        return dict(_ELEMENTWISE_DEFAULT)
    if kernel == "attention":  # [BLOCK_M, S] int32 scores per program; from the AOT sweep (benchmarks/autotune)
        return dict(BLOCK_M=32 if n <= 256 else 16, num_warps=8 if n <= 128 else 16)
    return dict(num_warps=4 if n <= 2048 else 8)


def validate_cpu_blocking(cfg: object) -> dict:
    """A C++ linear blocking: exactly CPU_BLOCKING_KEYS, rows and tiles positive ints (the kernel bounds rows by
    its ISA's), order one of CPU_ORDERS."""
    if not isinstance(cfg, dict) or set(cfg) != set(CPU_BLOCKING_KEYS):
        raise ValueError(f"a C++ linear blocking needs exactly the keys {CPU_BLOCKING_KEYS}, got {cfg!r}")
    for key in ("rows", "tiles"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or not 1 <= cfg[key] <= 4096:
            raise ValueError(f"bad value {key}={cfg[key]!r} in a C++ linear blocking: a positive int expected")
    if cfg["order"] not in CPU_ORDERS:
        raise ValueError(f"bad order {cfg['order']!r} in a C++ linear blocking: expected one of {CPU_ORDERS}")
    return cfg


def cpu_blocking_args(cfg: dict) -> list[int]:
    """A blocking as the C++ kernel takes it: [rows, tiles, panel_major]."""
    validate_cpu_blocking(cfg)
    return [cfg["rows"], cfg["tiles"], int(cfg["order"] == "panels")]


def cpu_blocking_of(args: list[int]) -> dict:
    """The inverse of `cpu_blocking_args`."""
    rows, tiles, panel_major = args
    return dict(rows=rows, tiles=tiles, order=CPU_ORDERS[panel_major])


def cpu_id() -> str:
    """This CPU's key for its tuned file: '<vendor>-<family>-<model>' (from /proc/cpuinfo; else the platform's
    processor string)."""
    from kernels._cpu import cpuinfo

    info = cpuinfo()
    if "vendor_id" in info:
        return "-".join(info.get(k, "?") for k in ("vendor_id", "cpu family", "model"))
    import platform

    return "".join(c if c.isalnum() else "-" for c in platform.processor() or platform.machine()) or "unknown"


def cpu_name() -> str:
    """This CPU's model name and key, e.g. 'AMD EPYC (AuthenticAMD-25-1)'."""
    from kernels._cpu import cpuinfo

    return f"{cpuinfo().get('model name', 'unknown CPU')} ({cpu_id()})"


def cpu_tuned_path() -> Path:
    return Path(os.environ.get("IBERT_CPU_TUNED") or TUNED_DIR / f"cpu-{cpu_id()}.json")


def parse_cpu_tuned(text: str) -> dict[str, dict[tuple[int, int, int], dict]]:
    """{isa: {(M, N, K): blocking}} from a CPU tuned file's text; ValueError naming the problem otherwise."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("linear", {}), dict):
        raise ValueError('expected a JSON object {"cpu": name, "linear": {"<isa>": {"M,N,K": blocking}}}')
    unknown = set(data) - {"cpu", "linear"}
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}: expected 'cpu' and 'linear'")
    out = {}
    for isa, entries in data.get("linear", {}).items():
        if isa not in CPU_ROWS:
            raise ValueError(f"unknown ISA {isa!r}: expected one of {', '.join(CPU_ROWS)}")
        if not isinstance(entries, dict):
            raise ValueError(f'"linear"."{isa}" must map sizes to blockings')
        out[isa] = {_size_key(k, 3): validate_cpu_blocking(c) for k, c in entries.items()}
    return out


def cpu_tuned_linear() -> dict[str, dict[tuple[int, int, int], dict]]:
    """This CPU's tuned blockings ({} when there are none or the file is malformed, with a warning)."""
    return _read_tuned(cpu_tuned_path(), parse_cpu_tuned, "CPU tuned file", "blockings")
