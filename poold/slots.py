"""Slots on the shared volume and the NFS-safe delivery protocol.

Every file crosses the volume the same way: written under a temporary name,
fsynced, closed, then renamed into place. A rename is atomic on local disks
and on NFS, so a reader that opens the exact final path sees all of a file or
none of it. ``job.json`` is written last and is the commit point of a
delivery; ``result.json`` plays the same role on the way back.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poold.types import PodName

CHUNK = 1024 * 1024


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


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def place_atomic(src: Path, path: Path, *, fsync: bool = True) -> None:
    """Put ``src`` at ``path`` by the protocol.

    Where both are on one filesystem, a hard link replaces the copy: the module
    store never rewrites a file (content-addressed, new files are renamed in),
    and the agent only reads, so no writer can change one name through the
    other. Across filesystems (poold's disk to NFS) the bytes are copied.
    """
    tmp = _tmp_name(path)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, CHUNK)
                fout.flush()
                if fsync:
                    os.fsync(fout.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any, *, fsync: bool = True) -> None:
    write_atomic(path, json.dumps(obj, separators=(",", ":")).encode(), fsync=fsync)


def read_json(path: Path) -> Any | None:
    """The committed document at ``path``, or None if it is not there yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return json.loads(data)
