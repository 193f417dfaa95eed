"""Atomic writes: a file or directory is written under a temporary name, then renamed into place, so that a
crash or `kill -9` leaves either the old version or the new one, never half of one."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


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
    """`write(tmp_dir)` then rename it to `final`, replacing an older version."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
