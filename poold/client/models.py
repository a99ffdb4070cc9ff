"""Typed views of the API's JSON bodies.

Each keeps the whole body it came from in ``record`` so fields a newer server
adds (``usage``, ``start``…) are never lost, and a client older than the
server still works: unknown fields are carried, never refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from poold.jobs.model import JobState  # the record's states, defined once
from poold.timestamps import parse_rfc3339

TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED,
     JobState.ERROR}
)


def parse_time(text: Any) -> datetime | None:
    """RFC 3339 (``…Z``) as the API writes it, or None."""
    if not isinstance(text, str) or not text:
        return None
    return parse_rfc3339(text)


@dataclass(frozen=True)
class Job:
    """A job record (see the README's "The job record")."""

    id: str
    #: one of :class:`JobState` (a plain ``str`` so a newer server's states still parse)
    state: str
    module: str
    args: list[str]
    env: dict[str, str]
    limits: dict[str, Any]
    exit_code: int | None
    error: str | None
    pod: str | None
    warm: bool | None
    submitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    wait_ms: float | None
    run_ms: float | None
    #: the whole record as the server sent it
    record: dict[str, Any] = field(repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        """True once the job has ended (it will not change again)."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == JobState.SUCCEEDED

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Job:
        return cls(
            id=str(body["id"]), state=str(body["state"]), module=str(body.get("module", "")),
            args=list(body.get("args") or []), env=dict(body.get("env") or {}),
            limits=dict(body.get("limits") or {}), exit_code=body.get("exit_code"),
            error=body.get("error"), pod=body.get("pod"), warm=body.get("warm"),
            submitted_at=parse_time(body.get("submitted_at")),
            started_at=parse_time(body.get("started_at")),
            finished_at=parse_time(body.get("finished_at")),
            wait_ms=body.get("wait_ms"), run_ms=body.get("run_ms"), record=body,
        )


@dataclass(frozen=True)
class Module:
    """A stored module: from an upload (``created`` says whether it was new) or a listing."""

    sha256: str
    size: int
    created: bool | None = None
    record: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any], *, created: bool | None = None) -> Module:
        return cls(sha256=str(body["sha256"]), size=int(body.get("size", 0)), created=created,
                   record=body)


@dataclass(frozen=True)
class Artifact:
    """A file the job wrote under ``/out``."""

    name: str
    size: int
    url: str

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Artifact:
        return cls(name=str(body["name"]), size=int(body.get("size", 0)),
                   url=str(body.get("url", "")))


@dataclass(frozen=True)
class Pool:
    """The pool's figures (``GET /v1/pool``)."""

    idle: int
    busy: int
    starting: int
    target: int
    max: int
    record: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Pool:
        return cls(idle=int(body.get("idle", 0)), busy=int(body.get("busy", 0)),
                   starting=int(body.get("starting", 0)), target=int(body.get("target", 0)),
                   max=int(body.get("max", 0)), record=body)


@dataclass(frozen=True)
class JobResult:
    """What :meth:`AsyncClient.run` returns: the final record and everything it printed."""

    job: Job
    output: list[str]

    @property
    def ok(self) -> bool:
        return self.job.succeeded
