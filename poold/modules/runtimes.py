"""Interpreters the operator offers (``[runtimes.<name>]``): jobs name one and send a script.

At start-up each runtime's module is put into the module store by content, like
an upload but from the operator's disk (no upload size cap: an interpreter is
often ~100 MB), and handed to the background compiler so the first job does not
pay for compiling it. A job that names the runtime runs that module.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import structlog

from poold.atomic import copy_atomic
from poold.config import ConfigError, InterpreterSettings, Settings
from poold.modules.compiler import CompileLimits, uncompilable_marker
from poold.modules.store import ModuleStore
from poold.runtime.digest import file_sha256
from poold.runtime.inspect import ModuleRejected, check_header
from poold.types import ModuleHash

log = structlog.get_logger(__name__)


class RuntimeState(Enum):
    READY = "ready"
    """Jobs run; the interpreter is compiled (or, without a background compiler,
    the first job compiles it)."""
    COMPILING = "compiling"
    """Being compiled once, at start-up. Jobs are accepted and start when it is done."""
    FAILED = "failed"
    """It could not be compiled within its runtimes.<name>.compile_* caps."""
    UNAVAILABLE = "unavailable"
    """Its files are missing and the runtime is ``optional``."""


@dataclass(frozen=True)
class Runtime:
    name: str
    settings: InterpreterSettings
    sha256: ModuleHash | None
    """None when unavailable."""
    size: int | None
    unavailable: str | None = None
    """Why the runtime cannot run jobs (an ``optional`` runtime's missing files)."""

    @property
    def max_script_bytes(self) -> int:
        return self.settings.max_script_kb * 1024

    def state(self, store: ModuleStore) -> tuple[RuntimeState, str | None]:
        """Where the runtime is now, and why when it cannot run jobs."""
        if self.sha256 is None:
            return RuntimeState.UNAVAILABLE, self.unavailable
        problem = store.compile_problem(self.sha256)
        if problem is not None:
            return RuntimeState.FAILED, problem
        if store.precompiler is not None and store.precompiler.pending(self.sha256):
            return RuntimeState.COMPILING, None
        return RuntimeState.READY, None

    def public(self, store: ModuleStore) -> dict[str, Any]:
        """What ``GET /v1/runtimes`` shows: never the host's paths."""
        state, why = self.state(store)
        return {
            "name": self.name,
            "state": state.value,
            "error": why,
            "module": self.sha256,
            "size": self.size,
            "args": list(self.settings.args),
            "mounts": sorted(self.settings.mounts),
            "script_path": f"/script/{self.settings.script_name}",
            "max_script_bytes": self.max_script_bytes,
        }


def install_runtimes(settings: Settings, store: ModuleStore) -> dict[str, Runtime]:
    """Check every runtime's files, put its module into ``store`` and queue its
    compilation under the runtime's own caps (``runtimes.<name>.compile_*``).

    Blocking (hashes files of ~100 MB): call it in a thread. Raises
    :class:`ConfigError` naming the key when a file or folder is missing, unless
    the runtime is ``optional``: then it is listed as unavailable, with the reason."""
    found: dict[str, Runtime] = {}
    for name, runtime in sorted(settings.runtimes.items()):
        key = f"runtimes.{name}"
        if settings.pool.backend != "local":
            # runner pods see neither poold's folders nor its compile cache, and their
            # WasmEdge driver cannot mount read-only (docs/runtimes.md, Backends)
            why = (f"{key}: runtimes run on the local backend only for now; the "
                   f"{settings.pool.backend} backend does not deliver their files to runner "
                   "pods yet (docs/runtimes.md, Backends)")
            log.warning("runtime unavailable", runtime=name, reason=why)
            found[name] = Runtime(name=name, settings=runtime, sha256=None, size=None,
                                  unavailable=why)
            continue
        try:
            _check_files(key, runtime)
        except ConfigError as e:
            if not runtime.optional:
                raise
            log.warning("runtime unavailable", runtime=name, reason=str(e))
            found[name] = Runtime(name=name, settings=runtime, sha256=None, size=None,
                                  unavailable=str(e))
            continue
        digest, size = file_sha256(runtime.module)
        sha = ModuleHash(digest)
        target = store.path(sha)
        if not target.exists():
            # a copy, not a link: the operator may rewrite their file in place later
            copy_atomic(runtime.module, target)
        if store.precompiler is not None:
            # a restart retries a compilation that failed (perhaps with raised caps)
            uncompilable_marker(target).unlink(missing_ok=True)
            store.precompiler.pinned.add(sha)
            store.precompiler.submit(
                tenant=f"runtime:{name}", sha256=sha, path=target,
                limits=CompileLimits(
                    timeout_s=runtime.compile_timeout_s, memory_mb=runtime.compile_memory_mb,
                    timeout_key=f"{key}.compile_timeout_s",
                    memory_key=f"{key}.compile_memory_mb"))
        found[name] = Runtime(name=name, sha256=sha, size=size, settings=runtime)
    return found


def _check_files(key: str, runtime: InterpreterSettings) -> None:
    if not runtime.module.is_file():
        raise ConfigError(
            f"{key}.module: {runtime.module} is not a file; fetch the interpreter "
            "(make runtimes) or correct the path")
    for guest, host in runtime.mounts.items():
        if not host.is_dir():
            raise ConfigError(f"{key}.mounts.{guest!r}: {host} is not a folder; fetch the "
                              "interpreter (make runtimes) or correct the path")
    with open(runtime.module, "rb") as f:
        try:
            check_header(f.read(8))
        except ModuleRejected as e:
            raise ConfigError(f"{key}.module: {runtime.module}: {e}") from e


def runtime_names(runtimes: dict[str, Runtime]) -> str:
    return ", ".join(sorted(runtimes)) if runtimes else "none (the operator configures them)"

