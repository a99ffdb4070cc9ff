"""The operator's runtimes on the shared volume, for runner pods (docs/runtimes.md, Backends).

A runner pod sees neither poold's disk nor its compile cache, and must not get a
100 MB interpreter copied into its slot per job, nor compile it (minutes of CPU,
GBs of memory). So poold publishes, once, to ``<slots.root>/runtimes/`` (the pods
mount it read-only at ``kubernetes.runtimes_mount_path``):

- ``<name>-<digest12>/module.wasm`` and ``mounts/<n>/...`` (``n``: the mount's
  index in sorted guest-path order), copied at start-up into a temporary folder
  and renamed into place, so a pod sees all of a runtime's files or none. The
  digest covers the module's sha256 and every mounted file (relative path and
  sha256), so a changed standard library gets a folder of its own and a job never
  sees half of two versions;
- ``compiled/wasmtime-<version>/<flavour>/<sha256>.cwasm``: the interpreter as
  poold's background compiler compiled it (the compile cache's own layout, so the
  agent reads it as a read-only second cache), each file renamed into place once
  it is complete.

On the Kubernetes backend a runtime (in a flavour) is ready only once both are
there. Publishing (or finding published) sets an entry's mtime: what no replica
has used for ``kubernetes.runtimes_retention_s`` and no job names is removed by
:mod:`poold.modules.prune`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from poold.atomic import CHUNK, fsync_dir, place_atomic
from poold.errors import ModuleError
from poold.runtime.digest import file_sha256
from poold.runtime.engine import CompileCache, artifact_path

log = structlog.get_logger(__name__)

FOLDER = "runtimes"
"""Under ``slots.root``: what runner pods mount read-only."""
COMPILED = "compiled"
"""Under :data:`FOLDER`: the published compiled interpreters."""
MODULE = "module.wasm"
MOUNTS = "mounts"
POLL_S = 5.0
"""How often poold looks for a newly compiled interpreter to publish when no word
of a compilation came (the background compiler calls :meth:`SharedRuntimes.wake`)."""


class PublishError(ModuleError):
    """A runtime could not be published to the shared volume; ``str()`` says why."""


def _fix(error: Exception) -> str:
    """What the operator can do about a publishing failure (a PublishError says it itself)."""
    if isinstance(error, PublishError):
        return ""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ("; the operator can make room on the shared volume (or give it more) and "
                "restart poold")
    return ("; the operator can correct what the error names on the shared volume (its "
            "permissions, say) and restart poold")


def folder_mounts(mounts: Mapping[str, Path]) -> list[tuple[str, str]]:
    """``(folder relative to the runtime's folder, guest path)`` for each mount, in
    the order they are published."""
    return [(f"{MOUNTS}/{n}", guest) for n, guest in enumerate(sorted(mounts))]


def _entries(folder: Path) -> Iterator[tuple[str, Path]]:
    """Sub-folders and regular files under ``folder``, sorted, by relative POSIX path.
    Symbolic links are left out: a link could lead out of the mount, and in a pod
    it would point at a path of poold's disk anyway."""
    for here, dirs, files in os.walk(folder):
        dirs.sort()
        base = Path(here)
        for name in dirs:
            path = base / name
            if not path.is_symlink():
                yield path.relative_to(folder).as_posix() + "/", path
        for name in sorted(files):
            path = base / name
            if path.is_file() and not path.is_symlink():
                yield path.relative_to(folder).as_posix(), path


def runtime_digest(module_sha256: str, mounts: list[Path]) -> str:
    """sha256 over the module's sha256 and each mounted folder's entries (relative
    path, and each file's sha256)."""
    digest = hashlib.sha256(f"module {module_sha256}\n".encode())
    for n, folder in enumerate(mounts):
        for relative, path in _entries(folder):
            content = "" if relative.endswith("/") else file_sha256(path)[0]
            digest.update(f"mount {n} {relative} {content}\n".encode())
    return digest.hexdigest()


def _folder(path: Path) -> None:
    """A folder runner pods can list whatever poold's umask (they may run as another user)."""
    path.mkdir(exist_ok=True)
    os.chmod(path, 0o755)  # noqa: S103 - read-only for pods, which may be another user


def mark_used(path: Path) -> bool:
    """Mark a published entry as used now, so that no replica prunes it
    (:mod:`poold.modules.prune`); False when it is not there."""
    try:
        os.utime(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as e:  # another user's (poold's uid changed): it is there all the same
        log.warning("could not mark a published runtime entry as used; a replica with "
                    "another config may prune it once kubernetes.runtimes_retention_s "
                    "passes", path=str(path), error=str(e))
        return os.path.lexists(path)
    return True


def _copy_file(src: Path, dst: Path, *, fsync: bool) -> None:
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, CHUNK)
        fout.flush()
        if fsync:
            os.fsync(fout.fileno())
    os.chmod(dst, 0o644)  # runner pods run as another user


def publish_files(
    root: Path, *, name: str, module: Path, module_sha256: str, mounts: list[Path],
    fsync: bool,
) -> str:
    """Copy a runtime to ``root/<name>-<digest12>/`` unless it is there; its folder name.

    Blocking (copies ~100 MB the first time): call it in a thread. The copy is
    made in a temporary folder beside it and renamed into place; two poold replicas
    publishing at once both succeed (the second rename finds the folder there)."""
    digest = runtime_digest(module_sha256, mounts)
    folder = f"{name}-{digest[:12]}"
    target = root / folder
    if mark_used(target) and target.is_dir():
        return folder
    root.parent.mkdir(parents=True, exist_ok=True)
    _folder(root)
    tmp = root / f".{folder}.{secrets.token_hex(4)}.tmp"
    try:
        _folder(tmp)
        place_atomic(module, tmp / MODULE, fsync=fsync)
        os.chmod(tmp / MODULE, 0o644)  # a hard link shares the mode of poold's own copy
        for n, source in enumerate(mounts):
            dest = tmp / MOUNTS / str(n)
            _folder(dest.parent)
            _folder(dest)
            for relative, path in _entries(source):
                if relative.endswith("/"):
                    _folder(dest / relative)
                else:
                    _copy_file(path, dest / relative, fsync=fsync)
            if fsync:
                for here, _, _ in os.walk(dest):
                    fsync_dir(Path(here))
        if fsync:
            if mounts:
                fsync_dir(tmp / MOUNTS)
            fsync_dir(tmp)
        if runtime_digest(module_sha256, [tmp / MOUNTS / str(n) for n in range(len(mounts))]) \
                != digest:
            raise PublishError(f"the files of runtimes.{name} changed while poold copied them; "
                               "restart poold once they are complete")
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            # another replica published the same version first
        if fsync:
            fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def publish_artifact(root: Path, cache: CompileCache, sha256: str, *, fuel: bool,
                     fsync: bool) -> bool:
    """Put poold's compiled form of a module into ``root/compiled/`` (a hard link where
    both are on one filesystem, else a copy, renamed into place); False when poold
    has not compiled it (yet)."""
    target = artifact_path(root / COMPILED, sha256, fuel=fuel)
    if mark_used(target) and target.is_file():
        return True
    source = cache.path(sha256, fuel=fuel)
    if not source.is_file():
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    _folder(root)
    for below in reversed(target.relative_to(root).parents[:-1]):
        _folder(root / below)
    place_atomic(source, target, fsync=fsync)
    os.chmod(target, 0o644)
    mark_used(target)  # a hard link keeps the compile's mtime
    return True


@dataclass(frozen=True)
class Published:
    """One runtime as poold offers it on the shared volume."""

    name: str
    sha256: str
    module: Path
    """poold's own copy (the module store's: it never changes under a name)."""
    mounts: list[Path]
    """Host folders in sorted guest-path order."""


class SharedRuntimes:
    """Publishes the runtimes and says which are on the volume; ``run()`` is the task."""

    def __init__(self, *, root: Path, cache: CompileCache, runtimes: list[Published],
                 fsync: bool) -> None:
        self.root = root
        self.cache = cache
        self.runtimes = runtimes
        self.fsync = fsync
        self.folders: dict[str, str] = {}
        """Runtime name -> its published folder under :attr:`root`."""
        self.compiled: set[tuple[str, bool]] = set()
        """(sha256, fuel) of the published compiled interpreters."""
        self.problems: dict[str, str] = {}
        """Runtime name -> why it could not be published."""
        self.files_done = asyncio.Event()
        """Set once every runtime's files are published (or failed to be)."""
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []
        # there before the first runner pod mounts it, even with nothing to publish
        root.parent.mkdir(parents=True, exist_ok=True)
        _folder(root)

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever something more is published (or failed to be)."""
        self._listeners.append(callback)

    def wake(self) -> None:
        """A compilation ended: look for something new to publish now."""
        self._wake.set()

    def folder(self, name: str) -> str | None:
        """The runtime's folder under the pods' runtimes folder, once published."""
        return self.folders.get(name)

    def ready(self, name: str, sha256: str, *, fuel: bool) -> bool:
        return name in self.folders and (sha256, fuel) in self.compiled

    def problem(self, name: str) -> str | None:
        return self.problems.get(name)

    async def wait(self, name: str, sha256: str, *, fuel: bool, within_s: float) -> None:
        """For tests and start-up scripts: until the runtime is ready in that flavour."""
        async with asyncio.timeout(within_s):
            while not self.ready(name, sha256, fuel=fuel):
                if name in self.problems:
                    raise PublishError(self.problems[name])
                changed = self._changed
                await changed.wait()

    def _note(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for listener in self._listeners:
            listener()

    async def run(self) -> None:
        """Publish every runtime's files, then each compiled flavour as poold's
        compiler finishes it; return when nothing is left to publish."""
        for runtime in self.runtimes:
            try:
                self.folders[runtime.name] = await asyncio.to_thread(
                    publish_files, self.root, name=runtime.name, module=runtime.module,
                    module_sha256=runtime.sha256, mounts=runtime.mounts, fsync=self.fsync)
                log.info("runtime published to the shared volume", runtime=runtime.name,
                         folder=self.folders[runtime.name])
            except (OSError, PublishError) as e:
                self.problems[runtime.name] = (
                    f"runtimes.{runtime.name}: its files could not be published to the "
                    f"shared volume ({self.root}): {e}{_fix(e)}")
                log.warning("runtime not published", runtime=runtime.name, error=str(e))
            self._note()
        self.files_done.set()
        while True:
            left = False
            for runtime in self.runtimes:
                if runtime.name in self.problems:
                    continue
                for fuel in (False, True):
                    if (runtime.sha256, fuel) in self.compiled:
                        continue
                    try:
                        done = await asyncio.to_thread(
                            publish_artifact, self.root, self.cache, runtime.sha256, fuel=fuel,
                            fsync=self.fsync)
                    except OSError as e:
                        self.problems[runtime.name] = (
                            f"runtimes.{runtime.name}: its compiled form could not be "
                            f"published to the shared volume ({self.root}): {e}{_fix(e)}")
                        log.warning("compiled runtime not published", runtime=runtime.name,
                                  error=str(e))
                        self._note()
                        break
                    if done:
                        self.compiled.add((runtime.sha256, fuel))
                        log.info("compiled runtime published to the shared volume",
                                 runtime=runtime.name, flavour="fuel" if fuel else "plain")
                        self._note()
                    else:
                        left = True
            if not left:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()
            self._wake.clear()
