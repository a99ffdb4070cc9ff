"""Run one WASI module to completion under its limits.

The interface is shared by the runtime drivers (wasmtime here, the WasmEdge CLI
in cluster pods): a blocking :meth:`Runner.run` meant for a worker thread, and
a thread-safe :meth:`Runner.interrupt` for cancellation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

Outcome = Literal["succeeded", "failed", "timed_out", "cancelled", "error"]
InterruptReason = Literal["timeout", "cancel", "limit"]
"""``limit``: the agent stopped the job for going over a quota (it says which)."""


@dataclass(frozen=True)
class RunRequest:
    wasm_path: Path
    sha256: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    timeout_s: float
    memory_mb: int
    fuel: int | None
    out_dir: Path
    stdin_path: Path | None
    read_only: tuple[tuple[Path, str], ...] = ()
    """Host folders the module sees read-only, each at its guest path."""
    verified: bool = True
    """False when the agent did not hash the delivered module because a compiled
    artifact of ``sha256`` was cached (hashing 100 MB costs more than the run of a
    small script): a runner that ends up reading the bytes checks them first."""
    interpreter: bool = False
    """The module is an operator's runtime (``[runtimes.<name>]``), not a tenant's
    upload: it may be a WASI *reactor* (``_initialize`` then ``run``, whose result is
    the exit code, instead of ``_start``) and may import ``host.call``, which is
    given a stub that answers -1 (docs/runtimes.md)."""
    may_compile: bool = True
    """False for a runtime's interpreter, on every backend: it starts from a compiled
    artifact (the worker's cache, or the one poold published for runner pods) or the
    job ends ``error``. Compiling 100 MB needs minutes of CPU and GBs of memory, which
    only poold's background compiler may spend, under the runtime's compile caps."""


@dataclass(frozen=True)
class RunResult:
    state: Outcome
    exit_code: int | None
    error: str | None
    cached: bool = False


# The outcomes every driver reports, in the words of the job's record, written
# once: a job ends with the same sentence whichever runtime ran it.

CANCELLED_BEFORE_START = "the job was cancelled before it started"
"""Also poold's and the agent's, wherever a cancellation is noticed before the
module runs (the queue, the delivery, the agent)."""


def cancelled(*, cached: bool = False) -> RunResult:
    return RunResult("cancelled", None, "the job was cancelled while running", cached)


def over_quota(*, cached: bool = False) -> RunResult:
    return RunResult("failed", None, "the job went over a quota", cached)


def timed_out(request: RunRequest, *, cached: bool = False) -> RunResult:
    return RunResult(
        "timed_out", None,
        f"the module ran longer than its time limit of {request.timeout_s:g} s", cached,
    )


def out_of_fuel(request: RunRequest, *, cached: bool = False) -> RunResult:
    return RunResult("failed", None, f"the module ran out of fuel (limit {request.fuel})", cached)


def exited(code: int) -> str:
    return f"the module exited with code {code}"


def trapped(reason: str) -> str:
    return f"the module trapped: {reason}"


Sink = Callable[[bytes], None]


class Runner(Protocol):
    def run(
        self, request: RunRequest, *, stdout: Sink, stderr: Sink, on_start: Callable[[], None]
    ) -> RunResult: ...

    def interrupt(self, reason: InterruptReason) -> None: ...


@dataclass(frozen=True)
class RuntimeUsage:
    """What only the runtime can see of the last run; ``None`` where it cannot."""

    memory_peak_bytes: int | None = None
    fuel_consumed: int | None = None


@runtime_checkable
class Measuring(Protocol):
    """A runner that reports what its last run consumed (the agent measures the rest)."""

    def runtime_usage(self) -> RuntimeUsage: ...
