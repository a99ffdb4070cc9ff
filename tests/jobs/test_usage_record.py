"""``usage`` in the job record: kept across a restart, null until the job ends,
and all-null (never zero) for a terminal job whose worker reported none."""

from __future__ import annotations

from pathlib import Path

from poold.jobs.journal import JournalJobStore
from poold.jobs.model import Job, JobState, Limits, to_record
from poold.protocol import Usage
from poold.types import JobId, ModuleHash, TenantName


def _job(**changes: object) -> Job:
    job = Job(id=JobId("j-1"), tenant=TenantName("alpha"), module=ModuleHash("a" * 64),
              module_size=8, limits=Limits(timeout_s=1, memory_mb=16))
    return job.evolve(**changes)


async def test_usage_survives_a_restart(tmp_path: Path) -> None:
    usage = Usage(cpu_ms=12.5, memory_peak_bytes=65536, rss_peak_bytes=50_000_000,
                  fuel_consumed=None, stdin_records=3, stdin_bytes=9, stdout_records=1,
                  stdout_bytes=4, stderr_bytes=0, artifacts_bytes=7)
    store = JournalJobStore(tmp_path / "jobs.jsonl", fsync=False)
    store.open()
    await store.put(_job(state=JobState.SUCCEEDED, usage=usage))
    store.close()
    again = JournalJobStore(tmp_path / "jobs.jsonl", fsync=False)
    (job,) = again.open()
    again.close()
    assert job.usage == usage
    assert job.public()["usage"] == usage.to_json()


def test_usage_is_null_before_the_end_and_all_null_when_unmeasured() -> None:
    assert _job(state=JobState.RUNNING).public()["usage"] is None
    ended = _job(state=JobState.ERROR).public()["usage"]
    assert ended == dict.fromkeys(Usage.names())
    assert "usage" not in {k for k, v in to_record(_job()).items() if v is not None}
