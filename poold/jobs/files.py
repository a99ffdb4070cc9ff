"""A finished job's files on poold's own disk: its log and its artifacts.

They are copied out of the slot before the worker is deleted, because the slot
goes with the worker. Only regular files are taken: a module can create a
symlink in /out pointing anywhere on the host, and following it would leak
host files to the uploader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

from poold.atomic import write_atomic
from poold.types import JobId

MAX_DROPPED_LISTED = 100
"""Dropped artifacts named in a job record; the quotas keep their number small."""


class JobFiles:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self._subscribers: dict[JobId, list[asyncio.Queue[bytes | None]]] = {}
        root.mkdir(parents=True, exist_ok=True)

    def dir(self, job: JobId) -> Path:
        return self.root / job

    def log_path(self, job: JobId) -> Path:
        return self.dir(job) / "stderr.log"

    def artifact_dir(self, job: JobId) -> Path:
        return self.dir(job) / "artifacts"

    # -- input of queued jobs ----------------------------------------------------

    def input_path(self, job: JobId) -> Path:
        return self.dir(job) / "input.json"

    def save_input(self, job: JobId, records: list[bytes]) -> None:
        """Keep a queued job's input until it is in Kafka, through a restart."""
        self.dir(job).mkdir(parents=True, exist_ok=True)
        data = json.dumps([r.decode() for r in records]).encode()
        write_atomic(self.input_path(job), data, fsync=self.fsync)

    def load_input(self, job: JobId) -> list[bytes]:
        try:
            return [r.encode() for r in json.loads(self.input_path(job).read_bytes())]
        except FileNotFoundError:
            return []

    def drop_input(self, job: JobId) -> None:
        self.input_path(job).unlink(missing_ok=True)

    def remove(self, job: JobId) -> None:
        """Retention: everything poold kept of the job."""
        shutil.rmtree(self.dir(job), ignore_errors=True)

    # -- live log --------------------------------------------------------------

    def append_log(self, job: JobId, chunk: bytes) -> None:
        path = self.log_path(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(chunk)
        for queue in self._subscribers.get(job, []):
            queue.put_nowait(chunk)

    def close_log(self, job: JobId, final: Path | None) -> None:
        """The job ended: the slot's log is the complete one; subscribers are done.

        The slot may be going at the same moment (its worker was killed, and the
        pool removes a dead worker's slot): then the live log is what there is."""
        if final is not None:
            self.log_path(job).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                shutil.copyfile(final, self.log_path(job))
        for queue in self._subscribers.pop(job, []):
            queue.put_nowait(None)

    def read_log(self, job: JobId) -> bytes:
        try:
            return self.log_path(job).read_bytes()
        except FileNotFoundError:
            return b""

    async def follow_log(self, job: JobId, *, ended: Awaitable[object]) -> AsyncIterator[bytes]:
        """What is there now, then new chunks until the job ends: until its log is
        closed, or ``ended`` completes, whichever comes first (a job cancelled while
        queued never had a log to close, and a job can end between the caller's look
        at its state and this subscription)."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._subscribers.setdefault(job, []).append(queue)
        watcher = asyncio.ensure_future(ended)
        watcher.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            current = self.read_log(job)
            if current:
                yield current
            while (chunk := await queue.get()) is not None:
                yield chunk
        finally:
            watcher.cancel()
            subs = self._subscribers.get(job)
            if subs and queue in subs:
                subs.remove(queue)
                if not subs:
                    del self._subscribers[job]

    # -- artifacts -------------------------------------------------------------

    def collect(
        self, job: JobId, source: Path, *, limit: int, max_files: int | None = None
    ) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
        """Copy regular files from ``source`` (the slot's /out). Returns the kept
        (name, size) and the dropped (name, reason), at most
        :data:`MAX_DROPPED_LISTED` of those, so the record stays bounded."""
        target = self.artifact_dir(job)
        found: list[tuple[str, int]] = []
        dropped: list[tuple[str, str]] = []

        def drop(rel: str, reason: str) -> None:
            if len(dropped) < MAX_DROPPED_LISTED:
                dropped.append((rel, reason))

        total = 0
        for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
            dirnames.sort()
            links = [d for d in dirnames if (Path(dirpath) / d).is_symlink()]
            for name in sorted(filenames + links):
                path = Path(dirpath) / name
                rel = path.relative_to(source).as_posix()
                st = path.lstat()
                if not stat.S_ISREG(st.st_mode):
                    drop(rel, "not a regular file (a link, pipe or device is never kept)")
                    continue
                if total + st.st_size > limit:
                    size = f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit} bytes"
                    drop(rel, f"over runtime.max_artifacts_mb ({size} in all)")
                    continue
                if max_files is not None and len(found) >= max_files:
                    drop(rel, f"over runtime.max_artifact_files ({max_files} files)")
                    continue
                dest = target / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest, follow_symlinks=False)
                total += st.st_size
                found.append((rel, st.st_size))
        return found, dropped

    def artifact(self, job: JobId, name: str) -> Path | None:
        base = self.artifact_dir(job).resolve()
        path = (base / name).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            return None
        return path
