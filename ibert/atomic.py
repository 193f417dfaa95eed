"""Atomic writes: a file or directory is written under a temporary name, then renamed into place, so that a
crash or `kill -9` leaves either the old version or the new one, never half of one."""
from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

_RENAME_EXCHANGE = 2  # linux/fs.h


def write_file(path: Path, write: Callable[[str], object]) -> None:
    """`write(tmp_path)` then rename to `path` (same directory, so the rename is atomic)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_dir(final: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp_dir)` then put it in place of `final`, replacing an older version: with an atomic exchange of
    the two (Linux renameat2), so that `final` always holds a whole version; elsewhere the old one is renamed
    aside first (a crash between the two renames leaves it as `.<name>.old`)."""
    final = Path(final)
    tmp, old = final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if final.exists() and _exchange(tmp, final):
        shutil.rmtree(tmp)
        return
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0
