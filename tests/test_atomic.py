"""Replacing a file: a reader sees the old content or the new, never a mix or a leftover."""

from __future__ import annotations

from pathlib import Path

import pytest

from poold.atomic import atomic_writer, copy_atomic, write_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_atomic(path, b"old")
    def die_writing() -> None:
        with atomic_writer(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("the writer died")

    with pytest.raises(RuntimeError):
        die_writing()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "config"
    write_atomic(path, b"token = 'x'", mode=0o600)
    assert path.stat().st_mode & 0o777 == 0o600
    write_atomic(path, b"token = 'y'", mode=0o600)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == b"token = 'y'"


def test_a_copy_does_not_follow_later_changes_of_its_source(tmp_path: Path) -> None:
    source = tmp_path / "python.wasm"
    source.write_bytes(b"v1")
    copied = tmp_path / "copied"
    copy_atomic(source, copied)
    with open(source, "r+b") as f:  # the operator rewrites their interpreter in place
        f.write(b"v2")
    assert copied.read_bytes() == b"v1"
