"""The job record users see, and the states it moves through."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from poold.protocol import Usage
from poold.timestamps import parse_rfc3339, rfc3339, utcnow
from poold.types import JobId, ModuleHash, PodName, TenantName

NOT_MEASURED = Usage()
"""The usage of a terminal job whose worker reported none (it never ran the module,
or died): every figure null, never zero."""


class JobState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    ERROR = "error"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED, JobState.ERROR}
)


@dataclass(frozen=True)
class Limits:
    timeout_s: float
    memory_mb: int
    fuel: int | None = None


@dataclass(frozen=True)
class OffsetRange:
    """Records ``[start, end)`` of one partition: what a job owns of it."""

    topic: str
    partition: int
    start: int
    end: int | None = None


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 3)


@dataclass(frozen=True)
class Job:
    """One job. Frozen: every change is a new record, written to the store first."""

    id: JobId
    tenant: TenantName
    module: ModuleHash
    module_size: int
    limits: Limits
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    input_count: int = 0
    state: JobState = JobState.QUEUED
    exit_code: int | None = None
    error: str | None = None
    pod: PodName | None = None
    warm: bool | None = None
    start: str | None = None
    """How the job got its worker: ``hot`` (a worker that just ran a job of this
    tenant), ``warm`` (an idle worker started before the job came) or ``cold``."""
    input: OffsetRange | None = None
    output: OffsetRange | None = None
    artifacts: tuple[tuple[str, int], ...] = ()
    artifacts_dropped: tuple[tuple[str, str], ...] = ()
    """Files under /out that were not kept, each with the reason (the first 100)."""
    submitted_at: datetime = field(default_factory=utcnow)
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    delivering: bool = False
    """Set (and persisted) just before ``job.json`` is committed to the slot: from
    then on the module may have started, so the job is never run again."""
    attempts: int = 0
    """Times the job was handed to a worker; a job is re-queued at most once."""
    idempotency_key: str | None = None
    usage: Usage | None = None
    """What the job consumed, as its worker reported it with the result."""
    runtime: str | None = None
    """The ``[runtimes.<name>]`` interpreter that runs ``script``; ``module`` is its module."""
    script: str | None = None

    def evolve(self, **changes: Any) -> Job:
        return dataclasses.replace(self, **changes)

    @property
    def wait_ms(self) -> float | None:
        return _ms(self.submitted_at, self.started_at)

    @property
    def run_ms(self) -> float | None:
        return _ms(self.started_at, self.finished_at)

    def public(self, *, waiting: dict[str, str] | None = None) -> dict[str, Any]:
        """The record as the HTTP API shows it. ``waiting``: why a queued job waits
        without a worker (its runtime is still being compiled, say), worked out by the
        caller when the record is read (:meth:`poold.api.app.Api.record`): never stored."""
        return {
            "id": self.id,
            "state": self.state.value,
            "waiting": waiting,
            "module": self.module,
            "runtime": self.runtime,
            "args": list(self.args),
            "env": dict(self.env),
            "limits": {
                "timeout_s": self.limits.timeout_s,
                "memory_mb": self.limits.memory_mb,
                "fuel": self.limits.fuel,
            },
            "exit_code": self.exit_code,
            "error": self.error,
            "pod": self.pod,
            "partition": self.output.partition if self.output else None,
            "warm": self.warm,
            "start": self.start,
            "input": _range(self.input),
            "output": _range(self.output),
            "artifacts": [{"name": n, "size": s} for n, s in self.artifacts],
            "artifacts_dropped": [{"name": n, "reason": r} for n, r in self.artifacts_dropped],
            "submitted_at": rfc3339(self.submitted_at),
            "assigned_at": rfc3339(self.assigned_at),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "wait_ms": self.wait_ms,
            "run_ms": self.run_ms,
            "usage": self.measured().to_json() if self.state.terminal else None,
        }

    def measured(self) -> Usage:
        """The job's usage; all null when nothing was measured."""
        return self.usage if self.usage is not None else NOT_MEASURED


def _when(text: str | None) -> datetime | None:
    return None if text is None else parse_rfc3339(text)


def _offsets(data: dict[str, Any] | None) -> OffsetRange | None:
    return None if data is None else OffsetRange(**data)


def to_record(job: Job) -> dict[str, Any]:
    """Everything needed to rebuild the job after a restart (see :func:`from_record`)."""
    return {
        "id": job.id, "tenant": job.tenant, "module": job.module, "size": job.module_size,
        "limits": dataclasses.asdict(job.limits), "args": list(job.args),
        "env": [list(p) for p in job.env], "inputs": job.input_count,
        "state": job.state.value, "exit_code": job.exit_code, "error": job.error,
        "pod": job.pod, "warm": job.warm, "start": job.start,
        "input": dataclasses.asdict(job.input) if job.input else None,
        "output": dataclasses.asdict(job.output) if job.output else None,
        "artifacts": [list(a) for a in job.artifacts],
        "artifacts_dropped": [list(a) for a in job.artifacts_dropped],
        "submitted_at": rfc3339(job.submitted_at), "assigned_at": rfc3339(job.assigned_at),
        "started_at": rfc3339(job.started_at), "finished_at": rfc3339(job.finished_at),
        "delivering": job.delivering, "attempts": job.attempts,
        "idempotency_key": job.idempotency_key,
        "usage": job.usage.to_json() if job.usage is not None else None,
        "runtime": job.runtime, "script": job.script,
    }


def from_record(data: dict[str, Any]) -> Job:
    submitted = _when(data["submitted_at"])
    assert submitted is not None
    return Job(
        id=JobId(data["id"]), tenant=TenantName(data["tenant"]),
        module=ModuleHash(data["module"]), module_size=int(data["size"]),
        limits=Limits(**data["limits"]), args=tuple(data["args"]),
        env=tuple((k, v) for k, v in data["env"]), input_count=int(data["inputs"]),
        state=JobState(data["state"]), exit_code=data["exit_code"], error=data["error"],
        pod=PodName(data["pod"]) if data["pod"] else None, warm=data["warm"],
        start=data.get("start"),
        input=_offsets(data["input"]), output=_offsets(data["output"]),
        artifacts=tuple((n, int(s)) for n, s in data["artifacts"]),
        artifacts_dropped=tuple((n, r) for n, r in data.get("artifacts_dropped", [])),
        submitted_at=submitted, assigned_at=_when(data["assigned_at"]),
        started_at=_when(data["started_at"]), finished_at=_when(data["finished_at"]),
        delivering=bool(data["delivering"]), attempts=int(data["attempts"]),
        idempotency_key=data.get("idempotency_key"),
        usage=Usage.from_json(data["usage"]) if data.get("usage") is not None else None,
        runtime=data.get("runtime"), script=data.get("script"),
    )


def _range(r: OffsetRange | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"topic": r.topic, "partition": r.partition, "start": r.start, "end": r.end}
