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
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from poold.jobs.model import Job, from_record, to_record
from poold.jobs.store import MemoryJobStore
from poold.types import JobId, TenantName

log = structlog.get_logger(__name__)


class JournalJobStore(MemoryJobStore):
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        super().__init__()
        self.path = path
        self._fsync = fsync
        self._fd: int | None = None
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._lock = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closing = False
        self.replay_seconds = 0.0

    # -- start-up --------------------------------------------------------------

    def open(self) -> list[Job]:
        """Replay and compact the journal; returns the live records, oldest first."""
        import time  # noqa: PLC0415

        started = time.perf_counter()
        records: dict[str, dict[str, Any]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = 0
        if self.path.exists():
            with open(self.path, "rb") as f:
                for raw in f:
                    try:
                        entry = json.loads(raw)
                    except json.JSONDecodeError:
                        torn += 1
                        continue
                    records[entry["id"]] = entry
        jobs: list[Job] = []
        for entry in records.values():
            if entry.get("expired"):
                self.expired[JobId(entry["id"])] = TenantName(entry["tenant"])
            else:
                jobs.append(from_record(entry))
        jobs.sort(key=lambda j: j.submitted_at)
        for job in jobs:
            self._remember(job)
        self._compact(jobs)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._writer = threading.Thread(target=self._write_loop, name="journal", daemon=True)
        self._writer.start()
        self.replay_seconds = time.perf_counter() - started
        log.info("job journal replayed", jobs=len(jobs), expired=len(self.expired),
                 torn_lines=torn, seconds=round(self.replay_seconds, 3))
        return jobs

    def _compact(self, jobs: Iterable[Job]) -> None:
        tmp = self.path.with_suffix(".compact")
        with open(tmp, "wb") as f:
            for job in jobs:
                f.write(json.dumps(to_record(job), separators=(",", ":")).encode() + b"\n")
            for job_id, tenant in self.expired.items():
                f.write(json.dumps({"id": job_id, "tenant": tenant, "expired": True}).encode()
                        + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()
        if self._writer is not None:
            self._writer.join(5)
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
        await self._append(to_record(job))
        await super().put(job)

    async def expire(self, job: Job) -> None:
        """Forget a finished job for good, leaving a tombstone so a GET says 410."""
        await self._append({"id": job.id, "tenant": job.tenant, "expired": True})
        self.expired[job.id] = job.tenant
        self._jobs.pop(job.id, None)
        if job.idempotency_key:
            self._keys.pop((job.tenant, job.idempotency_key), None)
        order = self._order.get(job.tenant)
        if order and job.id in order:
            order.remove(job.id)

    async def _append(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            raise RuntimeError("the job journal is not open")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self._pending.append((line, future))
            self._lock.notify()
        await future

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
                    assert self._fd is not None
                    os.write(self._fd, b"".join(line for line, _ in batch))
                    if self._fsync:
                        os.fsync(self._fd)
                except OSError as e:
                    error = e
                for _, future in batch:
                    loop = future.get_loop()
                    if error is None:
                        loop.call_soon_threadsafe(_resolve, future, None)
                    else:
                        loop.call_soon_threadsafe(_resolve, future, error)
            if closing and not batch:
                return

    def older_than(self, cutoff: datetime) -> list[Job]:
        return [j for j in self._jobs.values()
                if j.state.terminal and j.finished_at is not None and j.finished_at < cutoff]


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
