"""Atomic writes: a failed or killed write leaves the old version whole; a finished one replaces it whole."""
from pathlib import Path

import pytest

from ibert import atomic


def version(n: int):
    def write(d: Path) -> None:
        d.mkdir()
        (d / f"v{n}").write_text(str(n))
    return write


def test_write_dir_replaces_whole_versions_and_survives_a_failed_write(tmp_path):
    final = tmp_path / "model"
    atomic.write_dir(final, version(1))
    atomic.write_dir(final, version(2))
    assert [p.name for p in final.iterdir()] == ["v2"]

    def broken(d: Path) -> None:
        version(3)(d)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_dir(final, broken)
    assert [p.name for p in final.iterdir()] == ["v2"]
    atomic.write_dir(final, version(4))
    assert [p.name for p in final.iterdir()] == ["v4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left behind


def test_the_exchange_is_atomic_where_the_system_has_it(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    assert atomic._exchange(a, b)  # Linux renameat2(RENAME_EXCHANGE)
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_write_file_keeps_the_old_file_when_the_write_fails(tmp_path):
    f = tmp_path / "results.json"
    atomic.write_file(f, lambda p: Path(p).write_text("old"))

    def broken(p: str) -> None:
        Path(p).write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_file(f, broken)
    assert f.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
