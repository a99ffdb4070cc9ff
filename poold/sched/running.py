"""One running job: everything poold holds for it, in one object.

A :class:`RunningJob` is made when the dispatcher takes a job off the queue
(or when a job is found on a worker after a restart) and released exactly
once, by :meth:`poold.sched.scheduler.Scheduler._release`. It owns the
tenant's quota slot, the partition lease, the input records, the worker,
the cancel request and the output end the agent reports; followers of the
job's output wait on it. How the job's wait for its agent ended is a typed
:data:`Outcome`, not a string.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum, auto

from poold.protocol import ResultDocument
from poold.sched.pool import Worker
from poold.types import JobId, TenantName


@dataclass(frozen=True)
class Reported:
    """The agent committed a result."""

    result: ResultDocument


@dataclass(frozen=True)
class TimedOut:
    """No result within the job's time limit plus a grace: the worker is stuck."""


@dataclass(frozen=True)
class CancelExpired:
    """Cancelled, and the agent did not confirm within the grace period."""


@dataclass(frozen=True)
class WorkerLost:
    """The worker disappeared without a result."""

    reason: str


Outcome = Reported | TimedOut | CancelExpired | WorkerLost


class Disposal(Enum):
    """What happens to the worker when the job lets go of it."""

    RECYCLE = auto()
    """Delete it; the pool starts a fresh one (after any job, unless reused)."""
    REUSE = auto()
    """Give it back to the pool to take another job of the same tenant."""
    FORGET = auto()
    """It is not ours (the claim was lost or failed): the pool already decided."""
    KEEP = auto()
    """poold is stopping: leave it running for the next start to settle."""


class RunningJob:
    def __init__(
        self,
        *,
        job_id: JobId,
        tenant: TenantName,
        worker: Worker,
        records: list[bytes] | None,
    ) -> None:
        self.job_id = job_id
        self.tenant = tenant
        self.worker = worker
        self.records = records
        """Input records kept in memory since submission (None: read the saved copy)."""
        self.partition: int | None = None
        self.cancel = asyncio.Event()
        self.output_end: int | None = None
        """The end of the output Kafka has acknowledged so far, as the agent reports it."""
        self.final_end: int | None = None
        """The end of the output range, once the agent reported its result."""
        self.done = False
        """The output will not grow: reported, or the job ended without a result."""
        self._progress = asyncio.Event()
        self.released = False

    def output_progress(self, end: int) -> None:
        if self.output_end is None or end > self.output_end:
            self.output_end = end
            self._wake()

    def output_finished(self, end: int | None) -> None:
        if self.done:
            return
        if end is not None:
            self.final_end = end
            self.output_progress(end)
        self.done = True
        self._wake()

    def _wake(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    async def progressed(self, seen_end: int | None) -> None:
        """Return once the output end moved beyond ``seen_end`` or the output is final."""
        while not self.done and self.output_end == seen_end:
            await self._progress.wait()
