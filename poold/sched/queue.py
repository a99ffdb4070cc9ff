"""A fair queue: tenants take turns, so one tenant's burst cannot starve the rest.

Within a tenant, jobs run in submission order. Across tenants, the next job
comes from the next tenant in round-robin order that has work and room under
its concurrency quota.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable

from poold.types import JobId, TenantName


class FairQueue:
    def __init__(self) -> None:
        self._queues: OrderedDict[TenantName, deque[JobId]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def size(self, tenant: TenantName) -> int:
        q = self._queues.get(tenant)
        return len(q) if q else 0

    def push(self, tenant: TenantName, job: JobId) -> None:
        self._queues.setdefault(tenant, deque()).append(job)

    def push_front(self, tenant: TenantName, job: JobId) -> None:
        """Put a job back at the head of its tenant's line (its worker was lost)."""
        self._queues.setdefault(tenant, deque()).appendleft(job)
        self._queues.move_to_end(tenant, last=False)

    def insert(self, tenant: TenantName, job: JobId, *,
               before: Callable[[JobId], bool]) -> None:
        """Put a job into its tenant's line ahead of the first job ``before`` picks (a
        job that waited out of line goes back to its place); at the end if none."""
        q = self._queues.setdefault(tenant, deque())
        for i, other in enumerate(q):
            if before(other):
                q.insert(i, job)
                return
        q.append(job)

    def pop(self, eligible: Callable[[TenantName], bool]) -> tuple[TenantName, JobId] | None:
        for tenant in list(self._queues):
            q = self._queues[tenant]
            if not q or not eligible(tenant):
                continue
            job = q.popleft()
            if q:
                self._queues.move_to_end(tenant)
            else:
                del self._queues[tenant]
            return tenant, job
        return None

    def remove(self, tenant: TenantName, job: JobId) -> bool:
        q = self._queues.get(tenant)
        if not q or job not in q:
            return False
        q.remove(job)
        if not q:
            del self._queues[tenant]
        return True

    def demand(self, room: Callable[[TenantName], int]) -> int:
        """Queued jobs that could start now if workers were there."""
        return sum(min(len(q), max(0, room(t))) for t, q in self._queues.items())
