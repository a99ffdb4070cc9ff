"""A compile cache's read-only roots: the compiled runtimes poold publishes on the shared
volume, which runner pods read and must never change (another process owns them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import wasmtime

from poold.runtime.engine import CompileCache, NotCompiled, artifact_path, make_engine


def _snapshot(root: Path) -> dict[str, tuple[int, float, bytes]]:
    """Every file under ``root``: size, mtime and content."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_artifact_of_a_read_only_root_is_used_and_left_untouched(
        tmp_path: Path, upper: tuple[Path, str]) -> None:
    path, sha = upper
    shared = tmp_path / "shared"
    CompileCache(shared).precompile(sha, path)  # what poold publishes
    published = artifact_path(shared, sha, fuel=False)
    os.utime(published, (1_000_000, 1_000_000))
    before = _snapshot(shared)
    own = tmp_path / "own"
    cache = CompileCache(own, read_only=[shared])
    assert cache.has(sha, fuel=False)
    assert not cache.has(sha, fuel=True)
    path.unlink()  # the bytes are never read on a hit
    _, cached = cache.load(make_engine(fuel=False), sha, path, fuel=False, compile=False)
    assert cached is True
    assert _snapshot(shared) == before  # no utime, no write
    assert not own.exists() or not list(own.rglob("*.cwasm"))
    cache.prune(0)  # the size cap only ever removes the cache's own artifacts
    assert _snapshot(shared) == before


def test_a_damaged_artifact_of_a_read_only_root_is_skipped_not_removed(
        tmp_path: Path, upper: tuple[Path, str]) -> None:
    path, sha = upper
    shared = tmp_path / "shared"
    damaged = artifact_path(shared, sha, fuel=False)
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not an artifact")
    before = _snapshot(shared)
    cache = CompileCache(tmp_path / "own", read_only=[shared])
    with pytest.raises(NotCompiled, match="cannot be used"):
        cache.load(make_engine(fuel=False), sha, path, fuel=False, compile=False)
    assert _snapshot(shared) == before
    # a cache that may compile does so into its own root, never the shared one
    _, cached = cache.load(make_engine(fuel=False), sha, path, fuel=False)
    assert cached is False
    assert cache.path(sha, fuel=False).is_file()
    assert _snapshot(shared) == before


def test_a_miss_without_compiling_says_where_it_looked(
        tmp_path: Path, upper: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    path, sha = upper
    compiles: list[str] = []
    monkeypatch.setattr(wasmtime.Module, "from_file",
                        staticmethod(lambda engine, p: compiles.append(p)))
    cache = CompileCache(tmp_path / "own", read_only=[tmp_path / "shared"])
    with pytest.raises(NotCompiled) as refused:
        cache.load(make_engine(fuel=False), sha, path, fuel=False, compile=False)
    assert str(artifact_path(tmp_path / "shared", sha, fuel=False)) in str(refused.value)
    assert compiles == []
