"""The job journal: what is written survives a restart, compaction keeps it small."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from poold.jobs import journal
from poold.jobs.journal import JournalJobStore
from poold.jobs.model import Job, JobState, Limits, OffsetRange
from poold.timestamps import utcnow
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


async def test_with_fsync_each_record_is_synced_before_put_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``state.fsync = true``: a record reaches the disk before poold acts on it (a
    crash keeps the page cache, so only the fsync itself shows this)."""
    path = tmp_path / "jobs.journal"
    synced: list[bytes] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(path.read_bytes() if path.exists() else b"")

    monkeypatch.setattr(os, "fsync", fsync)
    store = JournalJobStore(path, fsync=True)
    store.open()
    try:
        for i in range(3):
            job = make_job(i)
            await store.put(job)
            assert any(job.id.encode() in seen for seen in synced), (
                f"put of record {i} returned before a fsync of it")
    finally:
        store.close()


async def test_versions_put_at_once_after_a_compaction_keep_their_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two versions of a record put at once, right after a compaction went through the
    writer thread: the file holds them in the order they were put, so a restart
    replays the last one (never the earlier version)."""
    monkeypatch.setattr(journal, "COMPACT_MIN_LINES", 2)  # the 4th line compacts
    path = tmp_path / "jobs.journal"
    store = JournalJobStore(path, fsync=False)
    store.open()
    job = make_job(1)
    versions = [job.evolve(args=(f"v{i}",)) for i in range(6)]
    # hold the writer thread until both puts have been made, so a line that skipped
    # the queue would overtake the queued one
    release = threading.Event()
    write_batch = store._write_batch

    def held(batch: list[Any]) -> None:
        release.wait(10)
        write_batch(batch)

    try:
        for version in versions[:4]:
            await store.put(version)
        monkeypatch.setattr(store, "_write_batch", held)
        puts = asyncio.gather(*(store.put(v) for v in versions[4:]))
        for _ in range(3):
            await asyncio.sleep(0)  # each put has run up to its write
        release.set()
        await puts
    finally:
        release.set()
        store.close()
    written = [json.loads(line)["args"][0] for line in path.read_bytes().splitlines()]
    assert written == ["v3", "v4", "v5"], written
    again = JournalJobStore(path)
    try:
        assert again.open() == [versions[-1]]
    finally:
        again.close()


async def test_the_journal_is_readable_by_poold_alone(tmp_path: Path) -> None:
    """It holds every tenant's jobs (arguments, environment): mode 0600 from the
    first write, compactions included, whatever the umask."""
    path = tmp_path / "jobs.journal"
    old = os.umask(0o022)
    try:
        store = JournalJobStore(path, fsync=False)
        store.open()
        await store.put(make_job(1))
        store.close()
        assert path.stat().st_mode & 0o777 == 0o600
        again = JournalJobStore(path, fsync=False)
        assert len(again.open()) == 1  # replayed and rewritten compacted
        again.close()
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["jobs.journal"]  # no temporary file left
