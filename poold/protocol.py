"""What poold and the agent say to each other: the job document and the result.

Both travel through the slot (``in/job.json``, ``out/result.json``); the
agent's event stream repeats the result so poold learns it without polling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobDocument:
        fields = dict(data)
        fields["input"] = PartitionRef(**data["input"]) if data.get("input") else None
        fields["output"] = PartitionRef(**data["output"])
        return cls(**fields)


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResultDocument:
        return cls(**data)
