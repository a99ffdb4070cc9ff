"""Removing runtimes nobody uses any more from the shared volume (docs/runtimes.md, Backends).

Each version of a runtime gets a folder of its own under ``<slots.root>/runtimes``
(~160 MB) and each module and wasmtime version a compiled form (~270-340 MB per
flavour), so changing a runtime or upgrading poold leaves the old ones behind. An
entry poold published is removed once all of these hold:

a. no runtime of this poold's config uses it (what the config uses is never
   removed, however old);
b. no job document in a slot names it (``runtime_dir``, or ``sha256`` for a compiled
   form of any wasmtime version and flavour): a runner pod adopted by a restarted
   poold may still be running a job from it. Any ``in/job.json`` counts, finished or
   not, until its slot is cleared or removed;
c. its mtime is older than ``kubernetes.runtimes_retention_s``. Every replica sets the
   mtime of what its own config uses when it publishes it, finds it published, and
   every :data:`PASS_EVERY_S`: so a replica running with another config (the other
   replica, during a change) keeps what it uses, and what a stopped one used goes
   one retention period later.

Only names poold makes are considered (``<name>-<digest12>/``, ``compiled/wasmtime-
<version>/<flavour>/<sha256>.cwasm`` and the hidden temporary names of an interrupted
publication), never through a symbolic link: anything else under ``runtimes/`` is
left alone. An entry is first renamed aside (atomic: a reader opening its exact name
sees all of it or nothing) and its mtime checked again, so a replica that touched it
meanwhile gets it back; then it is deleted. Two replicas pruning at once each find
the other's removals gone and carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from poold.config import NAME_PATTERN
from poold.metrics import Metrics
from poold.modules.shared import COMPILED, FOLDER, SharedRuntimes, mark_used
from poold.runtime.engine import WASMTIME_VERSION, flavour
from poold.slots import SLOT_NAME, Slot, read_json

log = structlog.get_logger(__name__)

PASS_EVERY_S = 600.0
"""How often each replica marks what it uses and looks for what nobody does: well
below the smallest ``kubernetes.runtimes_retention_s`` (1 h), so a replica that
misses a few passes (a slow volume) still keeps what it uses."""

RUNTIME_FOLDER = re.compile(NAME_PATTERN.removesuffix("$") + r"-[0-9a-f]{12}$")
ARTIFACT = re.compile(r"^[0-9a-f]{64}\.cwasm$")
VERSION = re.compile(r"^wasmtime-[0-9A-Za-z.+-]+$")
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
"""An interrupted publication's folder or file (:func:`poold.atomic.temp_name`)."""
ASIDE = re.compile(r"^\..+\.[0-9a-f]{8}\.removing$")
"""An entry renamed aside for removal whose removal was interrupted."""
CURRENT = f"wasmtime-{WASMTIME_VERSION}"
FLAVOURS = (flavour(fuel=False), flavour(fuel=True))


class Kind(StrEnum):
    """What a removed entry was (the metric's ``kind`` label)."""

    FOLDER = "folder"
    """A runtime's files (``<name>-<digest12>/``)."""
    ARTIFACT = "artifact"
    """A compiled form."""
    TEMPORARY = "temporary"
    """Left by an interrupted publication or removal."""


@dataclass(frozen=True)
class Removed:
    path: str
    """Relative to the runtimes folder."""
    kind: Kind
    bytes: int
    """Sizes of the regular files removed (a hard-linked artifact frees its blocks only
    when its last name goes)."""


@dataclass(frozen=True)
class InUse:
    """What the current config uses (rule a)."""

    folders: frozenset[str] = frozenset()
    """Folder names under the runtimes folder."""
    artifacts: frozenset[str] = frozenset()
    """Module sha256s whose compiled forms of this wasmtime version stay."""


def referenced(slots_root: Path) -> tuple[set[str], set[str]]:
    """``runtime_dir`` and ``sha256`` of every job document in a slot (rule b). Raises
    OSError or ValueError when one cannot be read: then nothing may be removed. Only
    folders named as poold names its workers are slots (not ``runtimes``, nor a
    ``lost+found`` only root may read)."""
    folders: set[str] = set()
    modules: set[str] = set()
    with os.scandir(slots_root) as entries:
        slots = [e for e in entries
                 if SLOT_NAME.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    for entry in slots:
        path = Slot(Path(entry.path)).job_json
        try:
            document = read_json(path)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        if not isinstance(document, dict):
            continue
        if isinstance(document.get("runtime_dir"), str):
            folders.add(document["runtime_dir"])
        if isinstance(document.get("sha256"), str):
            modules.add(document["sha256"])
    return folders, modules


def _size(path: Path) -> int:
    """Bytes of the regular files at or under ``path``, following no link."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size if stat.S_ISREG(st.st_mode) else 0
    total = 0
    for here, _, files in os.walk(path):  # links to folders are listed, never entered
        for name in files:
            with contextlib.suppress(OSError):
                found = os.lstat(os.path.join(here, name))
                if stat.S_ISREG(found.st_mode):
                    total += found.st_size
    return total


def _remove(path: Path, *, cutoff: float | None) -> int | None:
    """Delete ``path`` (a folder or a file, never followed); the bytes it held, or None
    when it is gone already (the other replica) or was touched since ``cutoff``."""
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}.removing")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    if cutoff is not None:
        try:
            touched = aside.lstat().st_mtime > cutoff
        except FileNotFoundError:
            return None
        if touched:  # a replica published or used it between the look and the rename
            try:
                os.rename(aside, path)
            except OSError:  # published again meanwhile: this copy is one too many
                pass
            else:
                return None
    size = _size(aside)
    if stat.S_ISDIR(aside.lstat().st_mode):
        shutil.rmtree(aside)
    else:
        aside.unlink(missing_ok=True)
    return size


def _stale(entry: os.DirEntry[str], cutoff: float) -> bool:
    return entry.stat(follow_symlinks=False).st_mtime <= cutoff


def _abandoned(entry: os.DirEntry[str], cutoff: float) -> bool:
    """A temporary entry nobody has written to, linked or renamed since ``cutoff``
    (the ctime too: a hard link made just now keeps its source's old mtime)."""
    st = entry.stat(follow_symlinks=False)
    return max(st.st_mtime, st.st_ctime) <= cutoff


def _leftover_until(entry: os.DirEntry[str], *, folder: bool, cutoff: float,
                    now: float) -> float | None:
    """For a leftover, the time since which it must be untouched to go; None for any
    other entry. An interrupted removal's entry (of any kind) goes after one pass; an
    interrupted publication's (a folder at the top, a file among the compiled forms)
    after the retention, as ``cutoff`` says."""
    if ASIDE.match(entry.name):
        return now - PASS_EVERY_S
    if TEMPORARY.match(entry.name) and entry.is_dir(follow_symlinks=False) == folder:
        return cutoff
    return None


Candidate = tuple[Path, Kind, bool]
"""``(path, kind, check the mtime again once renamed aside)``"""


def _candidates(root: Path, *, in_use: InUse, folders: set[str], modules: set[str],
                cutoff: float, now: float) -> Iterable[Candidate]:
    with os.scandir(root) as entries:
        top = sorted(entries, key=lambda e: e.name)
    for entry in top:
        path = Path(entry.path)
        if entry.is_symlink():
            continue
        if (until := _leftover_until(entry, folder=True, cutoff=cutoff, now=now)) is not None:
            if _abandoned(entry, until):
                yield path, Kind.TEMPORARY, False
        elif RUNTIME_FOLDER.match(entry.name) and entry.is_dir(follow_symlinks=False):
            if (entry.name not in in_use.folders and entry.name not in folders
                    and _stale(entry, cutoff)):
                yield path, Kind.FOLDER, True
        elif entry.name == COMPILED and entry.is_dir(follow_symlinks=False):
            yield from _artifacts(path, in_use=in_use, modules=modules, cutoff=cutoff,
                                  now=now)


def _artifacts(compiled: Path, *, in_use: InUse, modules: set[str], cutoff: float,
               now: float) -> Iterable[Candidate]:
    with os.scandir(compiled) as entries:
        versions = sorted((e for e in entries if VERSION.match(e.name)
                           and e.is_dir(follow_symlinks=False)), key=lambda e: e.name)
    for version in versions:
        for name in FLAVOURS:
            folder = Path(version.path) / name
            if folder.is_symlink() or not folder.is_dir():
                continue
            with os.scandir(folder) as entries:
                found = sorted(entries, key=lambda e: e.name)
            for entry in found:
                if not entry.is_file(follow_symlinks=False):
                    continue
                until = _leftover_until(entry, folder=False, cutoff=cutoff, now=now)
                if until is not None:
                    if _abandoned(entry, until):
                        yield Path(entry.path), Kind.TEMPORARY, False
                elif ARTIFACT.match(entry.name):
                    sha = entry.name.removesuffix(".cwasm")
                    kept = sha in modules or (version.name == CURRENT and sha in in_use.artifacts)
                    if not kept and _stale(entry, cutoff):
                        yield Path(entry.path), Kind.ARTIFACT, True


def prune(root: Path, *, slots_root: Path, in_use: InUse, retention_s: float,
          now: float | None = None) -> list[Removed]:
    """Remove what the rule (this module's docstring) lets go under ``root`` (the
    runtimes folder); what was removed. Blocking: call it in a thread."""
    if not root.is_dir() or root.is_symlink():
        return []
    folders, modules = referenced(slots_root)
    now = time.time() if now is None else now
    cutoff = now - retention_s
    removed: list[Removed] = []
    for path, kind, again in list(_candidates(root, in_use=in_use, folders=folders,
                                              modules=modules, cutoff=cutoff, now=now)):
        try:
            size = _remove(path, cutoff=cutoff if again else None)
        except OSError as e:  # its permissions, say: the others still go
            log.warning("could not remove an unused runtime entry from the shared volume; "
                        "trying again at the next pass", path=str(path), error=str(e))
            continue
        if size is not None:
            removed.append(Removed(path=path.relative_to(root).as_posix(), kind=kind,
                                   bytes=size))
    return removed


def touch(root: Path, in_use: InUse) -> None:
    """Mark what this replica's config uses as used now (rule c, for the other replica)."""
    paths = [root / name for name in in_use.folders]
    paths += [root / COMPILED / CURRENT / name / f"{sha}.cwasm"
              for sha in in_use.artifacts for name in FLAVOURS]
    for path in paths:
        mark_used(path)


class RuntimePruner:
    """The task that prunes the runtimes folder every :data:`PASS_EVERY_S`."""

    def __init__(self, *, slots_root: Path, retention_s: float,
                 shared: SharedRuntimes | None, metrics: Metrics) -> None:
        self.slots_root = slots_root
        self.root = slots_root / FOLDER
        self.retention_s = retention_s
        self.shared = shared
        self.metrics = metrics
        self.first_pass = asyncio.Event()
        """Set once the first pass is over (for tests)."""

    def in_use(self) -> InUse:
        """What this replica's config uses (read on the event loop: the publisher
        changes it there)."""
        shared = self.shared
        if shared is None:
            return InUse()
        return InUse(folders=frozenset(shared.folders.values()),
                     artifacts=frozenset(r.sha256 for r in shared.runtimes))

    def prune_once(self, in_use: InUse) -> list[Removed]:
        """One pass; blocking. A volume error skips the pass (logged): nothing is
        removed unless every slot's job document could be read."""
        try:
            touch(self.root, in_use)
            removed = prune(self.root, slots_root=self.slots_root, in_use=in_use,
                            retention_s=self.retention_s)
        except (OSError, ValueError) as e:
            log.warning("could not prune the runtimes on the shared volume; trying again "
                        "later", folder=str(self.root), error=str(e),
                        next_in_s=PASS_EVERY_S)
            return []
        for entry in removed:
            self.metrics.runtimes_removed.labels(entry.kind).inc()
            self.metrics.runtimes_removed_bytes.inc(entry.bytes)
            log.info("removed an unused runtime entry from the shared volume",
                     path=entry.path, kind=entry.kind, bytes=entry.bytes)
        if removed:
            log.info("pruned the runtimes on the shared volume", removed=len(removed),
                     bytes_freed=sum(e.bytes for e in removed), folder=str(self.root),
                     retention_s=self.retention_s)
        return removed

    async def run(self) -> None:
        if self.shared is not None:
            # until then a runtime of this config has no folder name to keep
            await self.shared.files_done.wait()
        while True:
            await asyncio.to_thread(self.prune_once, self.in_use())
            self.first_pass.set()
            await asyncio.sleep(PASS_EVERY_S)
