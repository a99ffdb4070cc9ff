"""Interpreters the operator offers (``[runtimes.<name>]``): jobs name one and send a script.

At start-up each runtime's module is put into the module store by content, like
an upload but from the operator's disk (no upload size cap: an interpreter is
often ~100 MB), and handed to the background compiler so the first job does not
pay for compiling it. A job that names the runtime runs that module.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poold.atomic import copy_atomic
from poold.config import ConfigError, InterpreterSettings, Settings
from poold.modules.store import ModuleStore
from poold.runtime.inspect import ModuleRejected, check_header
from poold.types import ModuleHash

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Runtime:
    name: str
    sha256: ModuleHash
    size: int
    settings: InterpreterSettings

    @property
    def max_script_bytes(self) -> int:
        return self.settings.max_script_kb * 1024

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/runtimes`` shows: never the host's paths."""
        return {
            "name": self.name,
            "module": self.sha256,
            "size": self.size,
            "args": list(self.settings.args),
            "mounts": sorted(self.settings.mounts),
            "script_path": f"/script/{self.settings.script_name}",
            "max_script_bytes": self.max_script_bytes,
        }


def install_runtimes(settings: Settings, store: ModuleStore) -> dict[str, Runtime]:
    """Check every runtime's files and put its module into ``store``.

    Blocking (hashes files of ~100 MB): call it in a thread. Raises
    :class:`ConfigError` naming the key when a file or folder is missing."""
    found: dict[str, Runtime] = {}
    for name, runtime in sorted(settings.runtimes.items()):
        key = f"runtimes.{name}"
        if not runtime.module.is_file():
            raise ConfigError(
                f"{key}.module: {runtime.module} is not a file; fetch the interpreter "
                "(make runtimes) or correct the path")
        for guest, host in runtime.mounts.items():
            if not host.is_dir():
                raise ConfigError(f"{key}.mounts.{guest!r}: {host} is not a folder")
        with open(runtime.module, "rb") as f:
            try:
                check_header(f.read(8))
            except ModuleRejected as e:
                raise ConfigError(f"{key}.module: {runtime.module}: {e}") from e
        sha, size = _sha256(runtime.module)
        target = store.path(sha)
        if not target.exists():
            # a copy, not a link: the operator may rewrite their file in place later
            copy_atomic(runtime.module, target)
        if store.precompiler is not None:
            store.precompiler.submit(tenant=f"runtime:{name}", sha256=sha, path=target)
        found[name] = Runtime(name=name, sha256=sha, size=size, settings=runtime)
    return found


def _sha256(path: Path) -> tuple[ModuleHash, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return ModuleHash(digest.hexdigest()), size


def runtime_names(runtimes: dict[str, Runtime]) -> str:
    return ", ".join(sorted(runtimes)) if runtimes else "none (the operator configures them)"

