"""The interface between the pool and the place workers run.

A backend creates a worker for a named slot, tells the pool when the worker
is ready (and where its agent listens) or gone (and why), claims an idle
worker for a job with a fenced write, and deletes workers. It reports what it
observes; the pool decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from poold.errors import BackendError
from poold.types import JobId, PodName, TenantName


class BackendUnavailable(BackendError):
    """The backend could not do what was asked for a temporary reason."""

    retriable = True


@dataclass(frozen=True)
class WorkerEvent:
    """``seen``: a worker exists but is not ready; ``ready``: its agent serves at
    ``endpoint`` (``job`` set if the worker already holds one), reported again if it
    becomes ready after ``unready``; ``unready``: a worker reported ready no longer is,
    for ``reason`` (it may recover); ``gone``: it is deleted, being deleted, or
    finished, for ``reason``."""

    kind: Literal["seen", "ready", "unready", "gone"]
    pod: PodName
    endpoint: str | None = None
    reason: str | None = None
    job: JobId | None = None
    token: str | None = None
    """The secret the worker's agent requires on every request."""
    tenant: TenantName | None = None
    """Set on ``ready`` when the worker is hot: it ran jobs of this tenant (``pool.reuse``)
    and may only ever take that tenant's jobs; a restarted daemon keeps it so."""
    jobs: int = 0
    """How many jobs the worker has taken, as recorded on it (``pool.max_jobs_per_worker``)."""


EventSink = Callable[[WorkerEvent], None]


class Backend(Protocol):
    name: str

    async def start(self, sink: EventSink) -> None:
        """Begin reporting worker events to ``sink``."""

    async def stop(self) -> None:
        """Stop reporting; delete nothing (a restarted daemon may adopt the workers)."""

    async def create(self, pod: PodName) -> None:
        """Start a worker whose slot ``<slots.root>/<pod>`` already exists."""

    async def claim(self, pod: PodName, job: JobId) -> bool:
        """Record on the worker that it holds ``job``; False if someone else won it."""

    async def release_claim(
        self, pod: PodName, *, job: JobId, tenant: TenantName, jobs: int
    ) -> bool:
        """``job`` succeeded and the worker stays for the next job of ``tenant``
        (``pool.reuse``): record on it that it holds no job, belongs to ``tenant``
        for the rest of its life, and has taken ``jobs`` jobs. False if it no longer
        holds ``job`` or is gone: then it must not be reused."""

    async def delete(self, pod: PodName) -> None:
        """Remove the worker; a ``gone`` event follows once it really is."""
