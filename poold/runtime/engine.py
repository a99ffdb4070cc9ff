"""The wasmtime engine configuration and the compiled-module cache.

poold (which precompiles at upload) and every agent (which runs) must build
the engine the same way, or a cached artifact would be refused; both call
:func:`make_engine`. The cache is keyed by module sha256, wasmtime version
and engine flavour, and written by temp-file-then-rename so workers sharing
it never read a half-written artifact. A cache may also consult read-only
roots that someone else fills (runner pods: the compiled runtimes poold
publishes on the shared volume), which it never writes, removes or touches.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import wasmtime

from poold.atomic import write_atomic
from poold.errors import ModuleError

WASMTIME_VERSION = importlib.metadata.version("wasmtime")


def make_engine(*, fuel: bool) -> wasmtime.Engine:
    """Epoch interruption always (wall-clock limits); fuel only when a job asks for it,
    because metering slows every instruction down."""
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.consume_fuel = fuel
    config.cranelift_opt_level = "speed"
    return wasmtime.Engine(config)


def flavour(*, fuel: bool) -> str:
    return "fuel" if fuel else "plain"


class NotCompiled(ModuleError):
    """A cache that may not compile (:meth:`CompileCache.load` with ``compile=False``)
    holds no usable artifact of the module; ``str()`` says why."""


def artifact_path(root: Path, sha256: str, *, fuel: bool) -> Path:
    """Where a cache rooted at ``root`` keeps a module's artifact: poold publishes its
    runtimes' artifacts to the shared volume in this same layout."""
    return root / f"wasmtime-{WASMTIME_VERSION}" / flavour(fuel=fuel) / f"{sha256}.cwasm"


class CompileCache:
    """Compiled modules on disk, shared by all workers of this machine or volume.

    ``read_only``: more cache roots in the same layout, consulted after this one
    and never written, removed or touched (a damaged or foreign artifact there
    is skipped, not deleted): another process owns them."""

    def __init__(self, root: Path, *, read_only: Sequence[Path] = ()) -> None:
        self.root = root / f"wasmtime-{WASMTIME_VERSION}"
        self.read_only = tuple(read_only)

    def path(self, sha256: str, *, fuel: bool) -> Path:
        return self.root / flavour(fuel=fuel) / f"{sha256}.cwasm"

    def _shared(self, sha256: str, *, fuel: bool) -> Iterator[Path]:
        for root in self.read_only:
            yield artifact_path(root, sha256, fuel=fuel)

    @staticmethod
    def _try_shared(engine: wasmtime.Engine, cached: Path) -> tuple[wasmtime.Module | None, str]:
        """Load an artifact of a read-only root, or say why not (never unlink it)."""
        if not cached.is_file():
            return None, f"{cached} does not exist"
        try:
            return wasmtime.Module.deserialize_file(engine, str(cached)), ""
        except wasmtime.WasmtimeError as e:
            text = str(e).strip()
            return None, f"{cached} cannot be used: {text.splitlines()[0] if text else e!r}"

    @staticmethod
    def _try_load(engine: wasmtime.Engine, cached: Path) -> tuple[wasmtime.Module | None, str]:
        """Load an artifact of this cache, or say why not. One wasmtime refuses
        (damaged, truncated, or built by another wasmtime or for other engine
        settings) is removed: whoever may compile makes it again (poold's background
        compiler notices it gone; a worker that may not compile never does)."""
        try:
            found = cached.stat()
        except FileNotFoundError:
            return None, f"{cached} does not exist"
        try:
            module = wasmtime.Module.deserialize_file(engine, str(cached))
        except wasmtime.WasmtimeError as e:
            with contextlib.suppress(FileNotFoundError):
                # not one a compiler has put in its place meanwhile
                if cached.stat().st_ino == found.st_ino:
                    cached.unlink()
            text = str(e).strip()
            return None, (f"{cached} could not be loaded, so it was removed "
                          f"({text.splitlines()[0] if text else type(e).__name__})")
        with contextlib.suppress(OSError):  # the mtime orders eviction: least recently used
            os.utime(cached)
        return module, ""

    @contextlib.contextmanager
    def _compiling(self, cached: Path) -> Iterator[None]:
        """One compiler per module at a time: the others wait, then load its result.
        A 16 MB interpreter takes ~20 s to compile; four workers starting it at
        once must not each pay that."""
        cached.parent.mkdir(parents=True, exist_ok=True)
        with open(cached.with_suffix(".lock"), "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def has(self, sha256: str, *, fuel: bool) -> bool:
        """Whether this cache or a read-only root holds an artifact of the module."""
        return self.path(sha256, fuel=fuel).is_file() or any(
            p.is_file() for p in self._shared(sha256, fuel=fuel))

    def load(
        self, engine: wasmtime.Engine, sha256: str, wasm_path: Path, *, fuel: bool,
        check: Callable[[Path], None] | None = None, compile: bool = True,
    ) -> tuple[wasmtime.Module, bool]:
        """The compiled module and whether it came from the cache. ``check`` is
        called on ``wasm_path`` before its bytes are compiled (never on a cache
        hit, which does not read them); it raises to refuse them. With
        ``compile=False`` a miss raises :class:`NotCompiled` instead of compiling
        (a runner pod must never compile a 100 MB interpreter)."""
        cached = self.path(sha256, fuel=fuel)
        module, why = self._try_load(engine, cached)
        if module is not None:
            return module, True
        reasons = [why]
        for shared in self._shared(sha256, fuel=fuel):
            module, why = self._try_shared(engine, shared)
            if module is not None:
                return module, True
            reasons.append(why)
        if not compile:
            raise NotCompiled("; ".join(reasons))
        with self._compiling(cached):
            module, _ = self._try_load(engine, cached)
            if module is not None:
                return module, True
            if check is not None:
                check(wasm_path)
            module = wasmtime.Module.from_file(engine, str(wasm_path))
            self._store(cached, bytes(module.serialize()))
        return module, False

    def precompile(self, sha256: str, wasm_path: Path, *, fuel: bool = False) -> bool:
        """Compile into the cache unless it is there; True when work was done."""
        cached = self.path(sha256, fuel=fuel)
        if cached.exists():
            return False
        with self._compiling(cached):
            if cached.exists():
                return False
            engine = make_engine(fuel=fuel)
            module = wasmtime.Module.from_file(engine, str(wasm_path))
            self._store(cached, bytes(module.serialize()))
        return True

    def prune(self, max_bytes: int, *, keep: Collection[str] = ()) -> list[Path]:
        """Remove the least recently used artifacts until the cache holds at most
        ``max_bytes``; the removed paths. A worker that has one open keeps reading
        it (the file goes when it is closed); a later job compiles it again.
        Artifacts of the modules in ``keep`` (the operator's runtimes, minutes to
        compile) are never removed, but count towards the total."""
        found: list[tuple[float, int, Path]] = []
        kept = 0
        for path in self.root.glob("*/*.cwasm"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path.stem in keep:
                kept += stat.st_size
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        total = kept + sum(size for _, size, _ in found)
        removed = []
        for _, size, path in sorted(found):
            if total <= max_bytes:
                break
            path.unlink(missing_ok=True)
            path.with_suffix(".lock").unlink(missing_ok=True)
            total -= size
            removed.append(path)
        return removed

    @staticmethod
    def _store(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
