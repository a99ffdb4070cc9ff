"""Where job records live.

The scheduler only speaks :class:`JobStore`; :class:`MemoryJobStore` keeps records
for the life of the daemon. A durable store (records that survive a restart)
implements the same protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Protocol

from poold.jobs.model import Job, JobState
from poold.types import JobId, TenantName


class JobStore(Protocol):
    async def put(self, job: Job) -> None:
        """Persist ``job`` (a new record or a new version of one) before it is acted on."""

    def get(self, job_id: JobId) -> Job | None: ...

    def by_key(self, tenant: TenantName, key: str) -> Job | None: ...

    @property
    def expired(self) -> dict[JobId, TenantName]: ...

    def list(
        self, tenant: TenantName, *, limit: int, before: JobId | None = None
    ) -> list[Job]: ...

    def all(self) -> Iterable[Job]: ...

    def of_tenant(self, tenant: TenantName) -> Iterator[Job]:
        """The tenant's jobs, oldest first (for the export)."""
        ...

    async def wait_change(self, job_id: JobId, seen: Job) -> Job:
        """Return the record once it differs from ``seen``."""
        ...


class MemoryJobStore:
    """Records in a dict, with the order of submission kept per tenant."""

    def __init__(self) -> None:
        self._jobs: dict[JobId, Job] = {}
        self._order: dict[TenantName, list[JobId]] = {}
        self._changed: dict[JobId, asyncio.Event] = {}
        self._keys: dict[tuple[TenantName, str], JobId] = {}
        self.expired: dict[JobId, TenantName] = {}

    def by_key(self, tenant: TenantName, key: str) -> Job | None:
        """The job a tenant submitted with this Idempotency-Key, if any."""
        job_id = self._keys.get((tenant, key))
        return self._jobs.get(job_id) if job_id else None

    async def put(self, job: Job) -> None:
        if job.id not in self._jobs:
            self._order.setdefault(job.tenant, []).append(job.id)
        if job.idempotency_key:
            self._keys[(job.tenant, job.idempotency_key)] = job.id
        self._jobs[job.id] = job
        event = self._changed.pop(job.id, None)
        if event is not None:
            event.set()

    def get(self, job_id: JobId) -> Job | None:
        return self._jobs.get(job_id)

    def list(self, tenant: TenantName, *, limit: int, before: JobId | None = None) -> list[Job]:
        ids = self._order.get(tenant, [])
        end = len(ids)
        if before is not None:
            try:
                end = ids.index(before)
            except ValueError:
                return []
        return [self._jobs[i] for i in reversed(ids[max(0, end - limit) : end])]

    def all(self) -> Iterable[Job]:
        return list(self._jobs.values())

    def of_tenant(self, tenant: TenantName) -> Iterator[Job]:
        """The ids are taken when the iteration starts (8 bytes a job), each record
        when it is reached; jobs removed in between are skipped."""
        for job_id in tuple(self._order.get(tenant, ())):
            job = self._jobs.get(job_id)
            if job is not None:
                yield job

    def counts(self) -> dict[JobState, int]:
        out = dict.fromkeys(JobState, 0)
        for job in self._jobs.values():
            out[job.state] += 1
        return out

    async def wait_change(self, job_id: JobId, seen: Job) -> Job:
        while True:
            current = self._jobs.get(job_id)
            if current is not None and current != seen:
                return current
            event = self._changed.setdefault(job_id, asyncio.Event())
            await event.wait()
