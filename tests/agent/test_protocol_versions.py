"""poold and its agents of different versions (a rolling upgrade, a rollback): the job
document and the result follow one rule (poold/protocol.py, docs/architecture.md
"Mixed versions"). An optional field at its default is left out; one that is written
is listed in ``requires`` unless advisory; a reader ignores a field it does not know,
with a warning, unless ``requires`` names it: then the job ends ``error`` with a
sentence, instead of running the wrong way or waiting for its time limit.

The end-to-end tests play the newer side inside this process (poold runs here; its
agents are real processes of the current code): poold's document gains a field, or the
agent's result does as poold reads it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from structlog.testing import capture_logs

from poold.daemon import Daemon
from poold.jobs.model import JobState
from poold.protocol import REQUIRES, JobDocument, PartitionRef, ResultDocument, Unsupported, Usage
from tests.support.daemon import Client, wait_done
from tests.support.wasm_fixtures import module

BASE = ["job_id", "sha256", "size", "args", "env", "timeout_s", "memory_mb", "fuel",
        "input", "output"]
"""The job document's fields before runtimes: what every agent since knows."""

MODULE_JOB = JobDocument(
    job_id="j-1", sha256="0" * 64, size=10, args=["a"], env=[["K", "V"]], timeout_s=5,
    memory_mb=64, fuel=None, input=PartitionRef("t.in", 0, 3, 5), output=PartitionRef("t.out", 0))
RESULT = ResultDocument(job_id="j-1", state="succeeded", exit_code=0, error=None,
                        started_at=1.0, finished_at=2.0, output_end=7, output_records=2)


def test_a_module_job_is_written_as_an_agent_older_than_runtimes_reads_it() -> None:
    written = MODULE_JOB.to_json()
    assert list(written) == BASE, written
    # an agent of the release before: the fields it knew, passed to its dataclass as-is
    older = dataclasses.make_dataclass("Older", BASE)
    older(**written)
    assert JobDocument.from_json(written) == MODULE_JOB


def test_a_runtime_job_names_what_it_requires() -> None:
    document = dataclasses.replace(MODULE_JOB, mounts=[["mounts/0", "/usr/local/lib"]],
                                   script="main.py", runtime="python", runtime_dir="python-0a")
    written = document.to_json()
    assert written[REQUIRES] == ["mounts", "script", "runtime", "runtime_dir"], written
    assert JobDocument.from_json(written) == document
    local = dataclasses.replace(document, mounts=[], runtime_dir=None).to_json()
    assert local[REQUIRES] == ["script", "runtime"], local
    assert "mounts" not in local and "runtime_dir" not in local


def test_a_document_of_an_older_poold_reads_with_the_defaults() -> None:
    """An older poold wrote every field it knew (runtime_dir, requires unknown to it)."""
    older = {**MODULE_JOB.to_json(), "mounts": [], "script": None, "runtime": None}
    assert JobDocument.from_json(older) == MODULE_JOB
    assert JobDocument.from_json(MODULE_JOB.to_json()).runtime_dir is None


def test_an_unknown_advisory_field_is_ignored_with_a_warning() -> None:
    with capture_logs() as logs:
        read = JobDocument.from_json({**MODULE_JOB.to_json(), "trace_id": "abc"})
    assert read == MODULE_JOB
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["fields"] == ["trace_id"] and warning["job_id"] == "j-1", warning


def test_a_required_field_this_agent_lacks_is_refused_with_a_sentence() -> None:
    document = {**MODULE_JOB.to_json(), "gpu": {"count": 1}, REQUIRES: ["gpu"]}
    with pytest.raises(Unsupported) as refused:
        JobDocument.from_json(document)
    assert refused.value.job_id == "j-1"
    said = str(refused.value)
    assert "does not know 'gpu'" in said and "poold is of a newer version" in said, said


@pytest.mark.parametrize("document", [
    {**MODULE_JOB.to_json(), REQUIRES: "gpu"},
    {key: value for key, value in MODULE_JOB.to_json().items() if key != "output"},
    {**MODULE_JOB.to_json(), "output": {"topic": "t.out"}},
])
def test_a_malformed_document_is_refused_naming_the_job(document: dict[str, Any]) -> None:
    with pytest.raises(Unsupported) as refused:
        JobDocument.from_json(document)
    assert refused.value.job_id == "j-1", refused.value


def test_a_result_leaves_out_its_defaults_and_marks_nothing_required() -> None:
    """A poold older than its agents (a rollback) reads any result: ``cached`` and
    ``usage`` are advisory, and at their defaults not written at all."""
    assert list(RESULT.to_json()) == ["job_id", "state", "exit_code", "error", "started_at",
                                      "finished_at", "output_end", "output_records"]
    measured = dataclasses.replace(RESULT, cached=True, usage=Usage(cpu_ms=3.0))
    written = measured.to_json()
    assert REQUIRES not in written and written["usage"]["cpu_ms"] == 3.0, written
    assert ResultDocument.from_json(written) == measured
    with capture_logs() as logs:
        assert ResultDocument.from_json({**written, "energy_j": 1.5}) == measured
    assert [e["fields"] for e in logs if e["log_level"] == "warning"] == [["energy_j"]]


def _newer_poold(monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any]) -> None:
    written = JobDocument.to_json

    def to_json(self: JobDocument) -> dict[str, Any]:
        data = written(self)
        required = [name for name in extra if name != "trace_id"]
        return {**data, **extra, REQUIRES: data.get(REQUIRES, []) + required}

    monkeypatch.setattr(JobDocument, "to_json", to_json)


async def test_a_worker_ends_a_job_that_needs_what_it_lacks_at_once(
        alpha: Client, daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the agent crashed on the document and the job waited for its time limit
    (then ``timed_out``, saying its worker did not stop it) or its worker's death."""
    _newer_poold(monkeypatch, {"gpu": {"count": 1}})
    job = await alpha.submit(await alpha.upload(module("upper")), input=["a"],
                             limits={"timeout_s": 120})
    done = await wait_done(daemon, job["id"], timeout=60)
    assert done.state is JobState.ERROR, done
    assert done.error is not None and done.started_at is None, done
    assert "does not know 'gpu'" in done.error and "Submit it again" in done.error, done.error


async def test_a_worker_runs_a_job_whose_unknown_field_is_advisory(
        alpha: Client, daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    _newer_poold(monkeypatch, {"trace_id": "abc"})
    job = await alpha.submit(await alpha.upload(module("upper")), input=["a"],
                             limits={"timeout_s": 120})
    done = await wait_done(daemon, job["id"], timeout=60)
    assert done.state is JobState.SUCCEEDED, done
    assert (await alpha.text(f"/v1/jobs/{job['id']}/output")).splitlines() == ["A"]


def _newer_agent(monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any]) -> None:
    """poold reads each result as a newer agent would have written it."""
    read = ResultDocument.from_json.__func__  # type: ignore[attr-defined]

    def from_json(cls: type[ResultDocument], data: dict[str, Any]) -> ResultDocument:
        result: ResultDocument = read(cls, {**data, **extra})
        return result

    monkeypatch.setattr(ResultDocument, "from_json", classmethod(from_json))


async def test_poold_reads_a_newer_agents_result_with_an_unknown_field(
        alpha: Client, daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, poold failed the job ('unexpected keyword argument')."""
    _newer_agent(monkeypatch, {"energy_j": 1.5})
    job = await alpha.run(module("upper"), input=["a"])
    assert job["state"] == "succeeded", job
    assert job["usage"]["cpu_ms"] is not None, job


async def test_a_result_that_needs_what_poold_lacks_ends_the_job_saying_so(
        alpha: Client, daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    _newer_agent(monkeypatch, {"partial": True, REQUIRES: ["partial"]})
    job = await alpha.run(module("upper"), input=["a"])
    assert job["state"] == "error", job
    assert "does not know 'partial'" in job["error"], job
    assert "upgrade poold" in job["error"], job
