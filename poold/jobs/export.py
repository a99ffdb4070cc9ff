"""Job records as flat rows: ``GET /v1/jobs/export`` (CSV or NDJSON).

One row per job, every field of the public record as a column of its own: the
fixed objects (``limits``, ``input``, ``output``, ``usage``, ``waiting``) become
``<object>_<field>`` columns; values that are lists or free-form maps
(``args``, ``env``, ``artifacts``) stay JSON text in one column. Columns are
derived from the record itself, so a field added to the record appears here
without a change. Rows are encoded in chunks as they are read, so an export
of any size holds only one chunk at a time.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from poold.errors import JobError
from poold.jobs.model import Job, JobState, Limits, OffsetRange
from poold.protocol import Usage
from poold.timestamps import parse_rfc3339
from poold.types import JobId, ModuleHash, PodName, TenantName

FORMATS = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
FLAT_OBJECTS = ("limits", "input", "output", "usage", "waiting")
"""Record fields that are objects with fixed keys: one column per key."""
CHUNK_BYTES = 64 * 1024
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_line = json.JSONEncoder(ensure_ascii=False).encode


def _template() -> Job:
    """A record with every optional object present: its keys are the columns."""
    offsets = OffsetRange("t", 0, 0, 0)
    return Job(
        id=JobId("j-"), tenant=TenantName("t"), module=ModuleHash(""), module_size=0,
        limits=Limits(timeout_s=1, memory_mb=1, fuel=1), state=JobState.SUCCEEDED,
        pod=PodName("p"), input=offsets, output=offsets, usage=Usage(),
    )


def _columns() -> list[str]:
    columns: list[str] = []
    for key, value in _template().public(waiting={"reason": "", "message": ""}).items():
        if key in FLAT_OBJECTS:
            assert isinstance(value, dict), key
            columns += [f"{key}_{sub}" for sub in value]
        else:
            columns.append(key)
    return columns


COLUMNS = _columns()


Record = Callable[[Job], dict[str, Any]]
"""A job's public record as the API shows it (:meth:`poold.api.app.Api.record`)."""


def flat(job: Job, record: Record = Job.public) -> dict[str, Any]:
    """The record as one flat row (JSON types; ``None`` where there is nothing)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    for key, value in record(job).items():
        if key in FLAT_OBJECTS:
            for sub, item in (value or {}).items():
                row[f"{key}_{sub}"] = item
        elif isinstance(value, list | dict):
            row[key] = _compact(value)
        else:
            row[key] = value
    return row


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def encode(jobs: Iterable[Job], fmt: str, record: Record = Job.public) -> Iterator[bytes]:
    """The export as chunks of about :data:`CHUNK_BYTES`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(COLUMNS)
    for job in jobs:
        row = flat(job, record)
        if fmt == "csv":
            writer.writerow([_cell(row[c]) for c in COLUMNS])
        else:
            buffer.write(_line(row))
            buffer.write("\n")
        if buffer.tell() >= CHUNK_BYTES:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


class BadFilter(JobError, ValueError):
    """A query parameter of the export that cannot be used; the text says why."""


def parse_time(name: str, text: str | None) -> datetime | None:
    if text is None or text == "":
        return None
    try:
        when = parse_rfc3339(text.replace(" ", "+"))  # a "+" in a query that was not escaped
    except ValueError:
        raise BadFilter(
            f"{name} must be an RFC 3339 time such as 2026-11-29T08:00:00Z, not {text!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse_states(values: list[str]) -> frozenset[JobState] | None:
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if not names:
        return None
    known = {s.value: s for s in JobState}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadFilter(
            f"unknown state {unknown[0]!r}; states are {', '.join(known)}"
        )
    return frozenset(known[n] for n in names)


def select(
    jobs: Iterable[Job],
    *,
    since: datetime | None,
    until: datetime | None,
    states: frozenset[JobState] | None,
) -> Iterator[Job]:
    """``since`` <= submitted_at < ``until``, in one of ``states``."""
    for job in jobs:
        if since is not None and job.submitted_at < since:
            continue
        if until is not None and job.submitted_at >= until:
            continue
        if states is not None and job.state not in states:
            continue
        yield job
