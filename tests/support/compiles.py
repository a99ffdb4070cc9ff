"""Holding a compilation: the compile cache's own lock on one artifact
(:class:`poold.runtime.engine.CompileCache`), held as by another compiler at work on the
same module. poold's compiler waits for it; once let go, it finds the artifact there (if
the test put it in place meanwhile) and loads it, or compiles it itself."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator

from poold.runtime.engine import CompileCache


@contextlib.contextmanager
def compile_held(cache: CompileCache, sha256: str, *, fuel: bool) -> Iterator[Callable[[], None]]:
    """Hold the flavour's compilation until the function given is called (or the block
    ends)."""
    lock_path = cache.path(sha256, fuel=fuel).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)

        def release() -> None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

        try:
            yield release
        finally:
            release()
