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

from poold.types import JobId, PodName


class BackendUnavailable(Exception):
    """The backend could not do what was asked for a temporary reason."""


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

    async def delete(self, pod: PodName) -> None:
        """Remove the worker; a ``gone`` event follows once it really is."""
