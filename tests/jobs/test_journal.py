"""The job journal: what is written survives a restart, compaction keeps it small."""

from __future__ import annotations

from pathlib import Path

import pytest

from poold.jobs import journal
from poold.jobs.journal import JournalJobStore
from poold.jobs.model import Job, JobState, Limits, OffsetRange, utcnow
from poold.types import JobId, ModuleHash, PodName, TenantName


def make_job(i: int, **kw: object) -> Job:
    base = Job(id=JobId(f"j-{i:032x}"), tenant=TenantName("alpha"),
               module=ModuleHash("a" * 64), module_size=10, limits=Limits(5.0, 64, None),
               args=("x",), env=(("K", "V"),))
    return base.evolve(**kw)


async def test_records_survive_a_restart(tmp_path: Path) -> None:
    store = JournalJobStore(tmp_path / "jobs.journal", fsync=True)
    assert store.open() == []
    job = make_job(1)
    await store.put(job)
    done = job.evolve(state=JobState.SUCCEEDED, pod=PodName("poold-w-0123456789"),
                      output=OffsetRange("t", 2, 5, 9), exit_code=0, finished_at=utcnow(),
                      idempotency_key="k")
    await store.put(done)
    second = make_job(2)
    await store.put(second)
    store.close()

    again = JournalJobStore(tmp_path / "jobs.journal")
    jobs = again.open()
    assert jobs == [done, second]
    assert again.get(done.id) == done
    assert again.by_key(TenantName("alpha"), "k") == done
    again.close()


async def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "jobs.journal"
    store = JournalJobStore(path)
    store.open()
    await store.put(make_job(1))
    store.close()
    with open(path, "ab") as f:
        f.write(b'{"id": "j-torn", "tena')  # a crash in the middle of a write
    again = JournalJobStore(path)
    assert [j.id for j in again.open()] == [make_job(1).id]
    again.close()


async def test_compaction_bounds_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "COMPACT_MIN_LINES", 20)
    path = tmp_path / "jobs.journal"
    store = JournalJobStore(path, fsync=False)
    store.open()
    for version in range(50):
        for i in range(3):
            await store.put(make_job(i, exit_code=version))
    store.close()
    lines = path.read_bytes().count(b"\n")
    assert lines <= 3 + 20 + 1, lines
    again = JournalJobStore(path)
    assert {j.exit_code for j in again.open()} == {49}
    again.close()


async def test_expired_jobs_leave_a_tombstone(tmp_path: Path) -> None:
    path = tmp_path / "jobs.journal"
    store = JournalJobStore(path)
    store.open()
    job = make_job(1, state=JobState.FAILED, finished_at=utcnow())
    await store.put(job)
    assert store.older_than(utcnow()) == [job]
    await store.expire(job)
    assert store.get(job.id) is None
    store.close()
    again = JournalJobStore(path)
    assert again.open() == []
    assert again.expired == {job.id: "alpha"}
    assert again.forget_tombstones(older_than_s=0) == 1
    assert again.expired == {}
    again.close()


async def test_finished_beyond_keeps_the_newest(tmp_path: Path) -> None:
    store = JournalJobStore(tmp_path / "jobs.journal")
    store.open()
    jobs = [make_job(i, state=JobState.SUCCEEDED, finished_at=utcnow()) for i in range(5)]
    for job in jobs:
        await store.put(job)
    await store.put(make_job(9))  # still queued: never expires early
    assert store.finished_beyond(3) == jobs[:2]
    store.close()
