"""A delivered module the agent did not hash (an interpreter of ~100 MB whose compiled
form is cached: hashing it would cost more than a small script's run) is either not
read at all, or checked by the runner before its bytes are compiled."""

from __future__ import annotations

import hashlib
from pathlib import Path

from poold.runtime.engine import CompileCache
from poold.runtime.runner import RunRequest, RunResult
from poold.runtime.wasmtime_runner import WasmtimeRunner
from tests.support.wasm_fixtures import module


def _run(cache: CompileCache, wasm: Path, sha: str, out: Path) -> RunResult:
    out.mkdir(exist_ok=True)
    request = RunRequest(wasm_path=wasm, sha256=sha, args=(), env=(), timeout_s=30,
                         memory_mb=64, fuel=None, out_dir=out, stdin_path=None, verified=False)
    return WasmtimeRunner(cache).run(request, stdout=lambda _: None, stderr=lambda _: None,
                                     on_start=lambda: None)


def test_a_cached_module_starts_without_reading_the_delivery(tmp_path: Path) -> None:
    good = tmp_path / "noop.wasm"
    good.write_bytes(module("noop"))
    sha = hashlib.sha256(good.read_bytes()).hexdigest()
    cache = CompileCache(tmp_path / "cache")
    assert cache.precompile(sha, good)
    damaged = tmp_path / "damaged.wasm"
    damaged.write_bytes(b"\0asm\1\0\0\0 not what was sent")
    result = _run(cache, damaged, sha, tmp_path / "out")
    assert (result.state, result.cached) == ("succeeded", True), result


def test_an_uncached_delivery_is_checked_before_it_is_compiled(tmp_path: Path) -> None:
    sha = hashlib.sha256(module("noop")).hexdigest()
    other = tmp_path / "other.wasm"  # valid, runnable, but not the module named
    other.write_bytes(module("exitcode"))
    cache = CompileCache(tmp_path / "cache")
    result = _run(cache, other, sha, tmp_path / "out")
    assert result.state == "error", result
    assert "does not match its sha256" in (result.error or "")
    assert not cache.has(sha, fuel=False)
