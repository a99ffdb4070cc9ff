"""Slots on the shared volume and the NFS-safe delivery protocol.

Every file crosses the volume the same way (:mod:`poold.atomic`): written
under a temporary name, fsynced, closed, then renamed into place. A rename is
atomic on local disks and on NFS, so a reader that opens the exact final path
sees all of a file or none of it. ``job.json`` is written last and is the commit point of a
delivery; ``result.json`` plays the same role on the way back.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poold.atomic import write_atomic
from poold.types import PodName

SLOT_NAME = re.compile(r"poold-w-[0-9a-f]{10}")
"""Names poold gives its workers, and so their slots (:func:`poold.types.new_pod_name`)."""


@dataclass(frozen=True)
class Slot:
    """The paths of one pod's slot, as poold sees them (``root/<pod>``) or the agent
    sees them (its mount)."""

    dir: Path

    @classmethod
    def of(cls, root: Path, pod: PodName) -> Slot:
        return cls(root / pod)

    @property
    def inbox(self) -> Path:
        return self.dir / "in"

    @property
    def outbox(self) -> Path:
        return self.dir / "out"

    @property
    def job_json(self) -> Path:
        return self.inbox / "job.json"

    @property
    def module(self) -> Path:
        return self.inbox / "module.wasm"

    @property
    def scripts(self) -> Path:
        """A runtime job's script lives here; the module sees the folder read-only."""
        return self.inbox / "script"

    @property
    def stdin(self) -> Path:
        return self.inbox / "stdin"

    @property
    def result_json(self) -> Path:
        return self.outbox / "result.json"

    @property
    def stderr_log(self) -> Path:
        return self.outbox / "stderr.log"

    @property
    def artifacts(self) -> Path:
        """The folder the module sees as ``/out``."""
        return self.outbox / "artifacts"

    def create(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def clear(self) -> None:
        """Empty ``in/`` and ``out/`` for the worker's next job (``pool.reuse``):
        nothing of the last job (module, input, result, log, files) stays. Links
        the module made are removed, never followed."""
        for folder in (self.inbox, self.outbox):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink(missing_ok=True)
        self.create()


def write_json_atomic(path: Path, obj: Any, *, fsync: bool = True) -> None:
    write_atomic(path, json.dumps(obj, separators=(",", ":")).encode(), fsync=fsync)


def read_json(path: Path) -> Any | None:
    """The committed document at ``path``, or None if it is not there yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return json.loads(data)
