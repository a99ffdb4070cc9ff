"""What poold and the agent say to each other: the job document and the result.

Both travel through the slot (``in/job.json``, ``out/result.json``); the
agent's event stream repeats the result so poold learns it without polling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class PartitionRef:
    topic: str
    partition: int
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class JobDocument:
    job_id: str
    sha256: str
    size: int
    args: list[str]
    env: list[list[str]]
    timeout_s: float
    memory_mb: int
    fuel: int | None
    input: PartitionRef | None
    output: PartitionRef
    mounts: list[list[str]] = field(default_factory=list)
    """``[folder, guest path]`` pairs the module sees read-only (a runtime's): host
    folders, or with ``runtime_dir`` folders relative to it."""
    script: str | None = None
    """For a runtime's job: the script's file name in ``in/script/``, which the
    module sees read-only at ``/script/``."""
    runtime: str | None = None
    """The ``[runtimes.<name>]`` whose interpreter this is: it may be a WASI reactor
    and import ``host.call`` (poold/runtime/runner.py ``RunRequest.interpreter``)."""
    runtime_dir: str | None = None
    """Runner pods: the runtime's folder under the agent's runtimes folder
    (``<name>-<digest12>``, published by poold to ``<slots.root>/runtimes``), holding
    ``module.wasm`` (the interpreter, read from there instead of the slot) and
    ``mounts/<n>``. Relative, so it means the same wherever the volume is mounted.
    None: the module is in the slot and the mounts are host folders (local backend)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobDocument:
        fields = dict(data)
        fields["input"] = PartitionRef(**data["input"]) if data.get("input") else None
        fields["output"] = PartitionRef(**data["output"])
        return cls(**fields)


@dataclass(frozen=True)
class Usage:
    """What one job consumed, as its worker measured it (``docs/metrics.md`` says how).

    ``None`` means "not measured" (the module never ran, its worker died, or the
    runtime cannot see it), never "zero".
    """

    cpu_ms: float | None = None
    """CPU time (user + system) of the module's run only: not start-up, not idling."""
    memory_peak_bytes: int | None = None
    """The module's linear memory at its largest (wasm pages x 64 KiB)."""
    rss_peak_bytes: int | None = None
    """The worker's peak resident memory during the job."""
    fuel_consumed: int | None = None
    """Fuel the module burnt; only when the job set ``limits.fuel``."""
    stdin_records: int | None = None
    stdin_bytes: int | None = None
    stdout_records: int | None = None
    stdout_bytes: int | None = None
    stderr_bytes: int | None = None
    """What the module wrote to stderr, before the log's size cap."""
    artifacts_bytes: int | None = None
    """Regular files the module left under ``/out``."""

    def to_json(self) -> dict[str, Any]:
        # not asdict(): its deep copy is most of an export's time, and fields are scalars
        return {name: getattr(self, name) for name in _USAGE_FIELDS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


_USAGE_FIELDS = tuple(f.name for f in fields(Usage))


@dataclass(frozen=True)
class ResultDocument:
    job_id: str
    state: str
    exit_code: int | None
    error: str | None
    started_at: float | None
    finished_at: float
    output_end: int | None
    output_records: int
    cached: bool = False
    usage: Usage | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResultDocument:
        fields_ = dict(data)
        usage = fields_.pop("usage", None)
        return cls(**fields_, usage=Usage.from_json(usage) if usage is not None else None)
