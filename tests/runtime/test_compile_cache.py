"""The compiled-module cache: compiled once, shared, robust to damage."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import wasmtime

from poold.runtime.engine import WASMTIME_VERSION, CompileCache, NotCompiled, make_engine


def count_compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = wasmtime.Module.from_file

    def counting(engine: wasmtime.Engine, path: str) -> wasmtime.Module:
        calls.append(path)
        return real(engine, path)

    monkeypatch.setattr(wasmtime.Module, "from_file", staticmethod(counting))
    return calls


def test_concurrent_workers_compile_once(
    tmp_path: Path, upper: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sha = upper
    calls = count_compiles(monkeypatch)
    cache = CompileCache(tmp_path / "cache")
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        _, cached = cache.load(make_engine(fuel=False), sha, path, fuel=False)
        results.append(cached)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1
    assert sorted(results) == [False, True, True, True]


def test_key_has_version_and_flavour(tmp_path: Path, upper: tuple[Path, str]) -> None:
    path, sha = upper
    cache = CompileCache(tmp_path / "cache")
    assert cache.precompile(sha, path) is True
    assert cache.precompile(sha, path) is False
    plain = cache.path(sha, fuel=False)
    assert plain.is_file()
    assert f"wasmtime-{WASMTIME_VERSION}" in str(plain)
    assert cache.path(sha, fuel=True) != plain
    _, cached = cache.load(make_engine(fuel=True), sha, path, fuel=True)
    assert cached is False, "a fuel engine needs its own artifact"


def test_damaged_artifact_is_recompiled(tmp_path: Path, upper: tuple[Path, str]) -> None:
    path, sha = upper
    cache = CompileCache(tmp_path / "cache")
    cache.precompile(sha, path)
    cache.path(sha, fuel=False).write_bytes(b"not a compiled module")
    module_, cached = cache.load(make_engine(fuel=False), sha, path, fuel=False)
    assert cached is False
    assert isinstance(module_, wasmtime.Module)
    _, again = cache.load(make_engine(fuel=False), sha, path, fuel=False)
    assert again is True


def test_a_cache_that_may_not_compile_removes_a_damaged_artifact_and_says_so(
        tmp_path: Path, upper: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker given a runtime's job (compile=False): the artifact wasmtime refuses is
    removed, so poold's background compiler sees it gone, and nothing is compiled."""
    path, sha = upper
    cache = CompileCache(tmp_path / "cache")
    cache.precompile(sha, path)
    artifact = cache.path(sha, fuel=False)
    artifact.write_bytes(artifact.read_bytes()[:1000])  # truncated
    compiles = count_compiles(monkeypatch)
    with pytest.raises(NotCompiled, match="could not be loaded, so it was removed") as refused:
        cache.load(make_engine(fuel=False), sha, path, fuel=False, compile=False)
    assert str(artifact) in str(refused.value)
    assert not artifact.exists()
    assert not cache.has(sha, fuel=False)
    assert compiles == []
