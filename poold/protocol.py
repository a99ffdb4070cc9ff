"""What poold and the agent say to each other: the job document and the result.

Both travel through the slot (``in/job.json``, ``out/result.json``); the
agent's event stream repeats the result so poold learns it without polling.

poold and its agents may be of different versions (a rolling upgrade replaces poold
while idle runner pods of the old image keep running; a rollback does the reverse),
so both documents follow one rule (docs/architecture.md, "Mixed versions"):

- the writer leaves out an optional field at its default, so a document that uses
  nothing new reads the same to an older reader;
- every optional field it does write is listed in ``requires`` unless the field is
  *advisory* (``field(metadata=ADVISORY)``: a reader that ignores it still does the
  right thing);
- a reader ignores a field it does not know, with a warning naming it, unless
  ``requires`` lists it: then it refuses the document (:class:`Unsupported`) and the
  job ends ``error`` with a sentence, rather than running it the wrong way.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass
from typing import Any

import structlog

from poold import __version__
from poold.errors import Error

log = structlog.get_logger(__name__)

REQUIRES = "requires"
"""The key that lists the optional fields a reader must understand to act on a document."""
ADVISORY = {"advisory": True}
"""Metadata of an optional field an older reader may ignore (it changes nothing about
how a job runs, or what its result means): it is never listed in ``requires``."""


class Unsupported(Error):
    """A document this side cannot act on correctly: it requires a field this version
    does not know, or a field it knows is malformed. ``str()`` is the job's error."""

    def __init__(self, message: str, *, job_id: str | None) -> None:
        super().__init__(message)
        self.job_id = job_id


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _encode(value: Any) -> Any:
    to_json = getattr(value, "to_json", None)
    if to_json is not None:
        return to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def _write(document: Any) -> dict[str, Any]:
    """The JSON form of ``document``: optional fields at their defaults left out, the
    others named in ``requires`` unless advisory."""
    data: dict[str, Any] = {}
    required: list[str] = []
    for f in fields(document):
        value = getattr(document, f.name)
        default = _default(f)
        if default is not MISSING and value == default:
            continue
        data[f.name] = _encode(value)
        if default is not MISSING and not f.metadata.get("advisory"):
            required.append(f.name)
    if required:
        data[REQUIRES] = required
    return data


def _read(cls: type[Any], data: dict[str, Any], *, what: str, reader: str,
          writer: str) -> dict[str, Any]:
    """The fields of ``data`` that ``cls`` knows. Raises :class:`Unsupported` when
    ``data`` requires one it does not; warns of the others it leaves out."""
    known = {f.name for f in fields(cls)}
    job_id = data.get("job_id")
    job_id = job_id if isinstance(job_id, str) else None
    requires = data.get(REQUIRES, [])
    if not isinstance(requires, list) or not all(isinstance(n, str) for n in requires):
        raise Unsupported(f"the {what} has a malformed {REQUIRES!r} ({requires!r}); "
                          f"{writer} and {reader} disagree on the protocol", job_id=job_id)
    lacking = [name for name in requires if name not in known]
    if lacking:
        raise Unsupported(
            f"{reader} (poold {__version__}) does not know {', '.join(map(repr, lacking))}, "
            f"which the {what} requires: {writer} is of a newer version", job_id=job_id)
    ignored = sorted(name for name in data if name not in known and name != REQUIRES)
    if ignored:
        log.warning("fields this version does not know were ignored (advisory, or the "
                    "writer is newer)", document=what, fields=ignored, job_id=job_id)
    return {name: value for name, value in data.items() if name in known}


def _construct(cls: type[Any], values: dict[str, Any], *, what: str,
               job_id: Any) -> Any:
    try:
        return cls(**values)
    except (TypeError, ValueError, KeyError) as e:
        raise Unsupported(f"the {what} could not be read: {e}",
                          job_id=job_id if isinstance(job_id, str) else None) from e


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
        return _write(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobDocument:
        """Raises :class:`Unsupported` (the job's error) for a document this agent
        cannot run as poold meant it."""
        what = "job document"
        values = _read(cls, data, what=what, reader="this worker's agent", writer="poold")
        job_id = data.get("job_id")
        try:
            ref = {f.name for f in fields(PartitionRef)}
            for name in ("input", "output"):
                given = values.get(name)
                if isinstance(given, dict):
                    values[name] = PartitionRef(**{k: v for k, v in given.items() if k in ref})
        except TypeError as e:
            raise Unsupported(f"the {what} could not be read: {e}",
                              job_id=job_id if isinstance(job_id, str) else None) from e
        document: JobDocument = _construct(cls, values, what=what, job_id=job_id)
        return document


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
    cached: bool = field(default=False, metadata=ADVISORY)
    """Whether the module started from the compile cache: statistics only."""
    usage: Usage | None = field(default=None, metadata=ADVISORY)
    """What the job consumed: a poold that ignores it loses the figures, not the job."""

    def to_json(self) -> dict[str, Any]:
        return _write(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResultDocument:
        """Raises :class:`Unsupported` for a result this poold cannot read as the
        agent meant it."""
        what = "worker's result"
        values = _read(cls, data, what=what, reader="this poold", writer="the worker's agent")
        usage = values.get("usage")
        if isinstance(usage, dict):
            values["usage"] = Usage.from_json(usage)
        document: ResultDocument = _construct(cls, values, what=what, job_id=data.get("job_id"))
        return document
