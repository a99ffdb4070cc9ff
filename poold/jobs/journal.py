"""Durable job records: a write-ahead journal on poold's state volume.

Every new version of a record is appended as one JSON line and fsynced before
``put`` returns, so the scheduler can act on it knowing it survives a crash
(accepted before the 202, assigned before delivery, terminal before the
worker is deleted). Concurrent writes share one fsync (group commit) in a
writer thread, so the event loop never waits on the disk.

At start-up the journal is replayed — the last line of a record wins, a torn
last line from a crash is ignored — and rewritten compacted (one line per
live record, plus tombstones of expired jobs), so replay time is bounded by
the number of retained jobs, not by the history. ``docs/architecture.md``
says why this beats a compacted Kafka topic here.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from poold.atomic import write_atomic
from poold.jobs.model import Job, from_record, to_record
from poold.jobs.store import MemoryJobStore
from poold.types import JobId, TenantName

log = structlog.get_logger(__name__)

COMPACT_MIN_LINES = 10_000
"""The journal is rewritten once it holds this many lines, and three times more
than there are live records."""


class JournalJobStore(MemoryJobStore):
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        super().__init__()
        self.path = path
        self._fsync = fsync
        self._fd: int | None = None
        self._pending: list[tuple[bytes, asyncio.Future[None], bytes | None]] = []
        self._lines: dict[JobId, bytes] = {}
        """The latest serialized line of every record: compaction writes these."""
        self._appended = 0
        self._queued = 0
        """Lines handed to the writer thread and not yet written."""
        self._lock = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closing = False
        self.replay_seconds = 0.0

    # -- start-up --------------------------------------------------------------

    def open(self) -> list[Job]:
        """Replay and compact the journal; returns the live records, oldest first."""
        started = time.perf_counter()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = 0
        entries: dict[JobId, dict[str, Any]] = {}
        if self.path.exists():
            with open(self.path, "rb") as f:
                for raw in f:
                    try:
                        entry = json.loads(raw)
                    except json.JSONDecodeError:
                        torn += 1  # the tail of a write a crash interrupted
                        continue
                    job_id = JobId(entry["id"])
                    entries[job_id] = entry
                    self._lines[job_id] = raw if raw.endswith(b"\n") else raw + b"\n"
                    if entry.get("expired"):
                        self.expired[job_id] = TenantName(entry["tenant"])
        jobs: list[Job] = []
        for job_id, entry in entries.items():
            if job_id not in self.expired:
                jobs.append(from_record(entry))
        jobs.sort(key=lambda j: j.submitted_at)
        for job in jobs:
            self._remember(job)
        self._write_snapshot(b"".join(self._lines.values()))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._writer = threading.Thread(target=self._write_loop, name="journal", daemon=True)
        self._writer.start()
        self.replay_seconds = time.perf_counter() - started
        log.info("job journal replayed", jobs=len(jobs), expired=len(self.expired),
                 torn_lines=torn, seconds=round(self.replay_seconds, 3))
        return jobs

    def _write_snapshot(self, data: bytes) -> None:
        write_atomic(self.path, data, mode=0o600)
        self._appended = 0

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()
        if self._writer is not None:
            self._writer.join(5)
            self._writer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- writing ---------------------------------------------------------------

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        if job.idempotency_key:
            self._keys[(job.tenant, job.idempotency_key)] = job.id
        order = self._order.setdefault(job.tenant, [])
        if not order or order[-1] != job.id:
            order.append(job.id)

    async def put(self, job: Job) -> None:
        await self._append(job.id, to_record(job))
        await super().put(job)

    async def expire(self, job: Job) -> None:
        """Forget a finished job for good, leaving a tombstone so a GET says 410."""
        await self._append(job.id, {"id": job.id, "tenant": job.tenant, "expired": True,
                                    "at": time.time()})
        self.expired[job.id] = job.tenant
        self._jobs.pop(job.id, None)
        if job.idempotency_key:
            self._keys.pop((job.tenant, job.idempotency_key), None)
        order = self._order.get(job.tenant)
        if order and job.id in order:
            order.remove(job.id)

    async def _append(self, job_id: JobId, record: dict[str, Any]) -> None:
        if self._fd is None:
            raise RuntimeError("the job journal is not open")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        self._lines[job_id] = line
        self._appended += 1
        snapshot = None
        if self._appended > max(COMPACT_MIN_LINES, 3 * len(self._lines)):
            # The journal holds mostly superseded versions: rewrite it. The
            # snapshot includes this line, so the writer replaces the file with
            # it instead of appending.
            snapshot = b"".join(self._lines.values())
            self._appended = 0
        if not self._fsync and snapshot is None and self._queued == 0:
            # Nothing to wait for on the disk and nothing queued before this
            # line: an append of a few hundred bytes is cheaper than a hop to
            # the writer thread and back.
            os.write(self._fd, line)
            return
        self._queued += 1
        with self._lock:
            self._pending.append((line, future, snapshot))
            self._lock.notify()
        try:
            await future
        finally:
            self._queued -= 1

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._lock.wait()
                batch, self._pending = self._pending, []
                closing = self._closing
            if batch:
                error: BaseException | None = None
                try:
                    self._write_batch(batch)
                except OSError as e:
                    error = e
                for _, future, _ in batch:
                    future.get_loop().call_soon_threadsafe(_resolve, future, error)
            if closing and not batch:
                return

    def _write_batch(self, batch: list[tuple[bytes, asyncio.Future[None], bytes | None]]) -> None:
        assert self._fd is not None
        chunk: list[bytes] = []
        for line, _, snapshot in batch:
            if snapshot is None:
                chunk.append(line)
                continue
            # lines queued before the snapshot are in it; those after follow it
            chunk = []
            self._write_snapshot(snapshot)
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            log.info("job journal compacted", records=snapshot.count(b"\n"))
        if chunk:
            os.write(self._fd, b"".join(chunk))
            if self._fsync:
                os.fsync(self._fd)

    def forget_tombstones(self, older_than_s: float) -> int:
        """Drop tombstones old enough that nobody asks any more; the next
        compaction leaves them out of the file."""
        cutoff = time.time() - older_than_s
        dropped = 0
        for job_id in list(self.expired):
            line = self._lines.get(job_id)
            if line is None or json.loads(line).get("at", 0) < cutoff:
                self._lines.pop(job_id, None)
                del self.expired[job_id]
                dropped += 1
        return dropped

    def older_than(self, cutoff: datetime) -> list[Job]:
        return [j for j in self._jobs.values()
                if j.state.terminal and j.finished_at is not None and j.finished_at < cutoff]

    def finished_beyond(self, keep: int) -> list[Job]:
        """The oldest finished jobs beyond the newest ``keep`` (a bound on replay time)."""
        done = [j for j in self._jobs.values() if j.state.terminal]
        if len(done) <= keep:
            return []
        done.sort(key=lambda j: j.finished_at or j.submitted_at)
        return done[: len(done) - keep]


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
