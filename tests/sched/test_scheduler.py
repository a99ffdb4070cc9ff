"""The scheduler against a scripted backend, scripted agent links and a fake
data plane: every way a running job ends gives back its quota slot, its
partition and its worker exactly once, and the job's record says how it ended.

The agents here are scripts (each worker's link yields what the test pushes),
so these tests can make any event happen in any order; the real agent, broker
and workers are exercised by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from poold.backends.base import EventSink, WorkerEvent
from poold.jobs.files import JobFiles
from poold.jobs.model import Job, JobState, Limits
from poold.jobs.store import MemoryJobStore
from poold.metrics import Metrics
from poold.sched.pool import Pool, Worker
from poold.sched.scheduler import Scheduler
from poold.slots import Slot, write_json_atomic
from poold.types import JobId, ModuleHash, PodName, TenantName, new_job_id
from tests.support.daemon import make_settings

TENANT = TenantName("alpha")
MODULE = ModuleHash("ab" * 32)


class ScriptedBackend:
    """Workers are ready at once; claims can be held back or refused."""

    name = "scripted"

    def __init__(self) -> None:
        self.sink: EventSink | None = None
        self.created: list[PodName] = []
        self.deleted: list[PodName] = []
        self.deleted_one = asyncio.Event()
        self.claim_gate: asyncio.Event | None = None
        self.refuse_claims = 0

    async def start(self, sink: EventSink) -> None:
        self.sink = sink

    async def stop(self) -> None:
        pass

    async def create(self, pod: PodName) -> None:
        self.created.append(pod)
        asyncio.get_running_loop().call_soon(self.event, "ready", pod)

    def event(self, kind: Any, pod: PodName, reason: str | None = None) -> None:
        assert self.sink is not None
        self.sink(WorkerEvent(kind, pod, endpoint="http://127.0.0.1:1", reason=reason))

    async def claim(self, pod: PodName, job: JobId) -> bool:
        if self.claim_gate is not None:
            await self.claim_gate.wait()
        if self.refuse_claims:
            self.refuse_claims -= 1
            return False
        return True

    async def delete(self, pod: PodName) -> None:
        self.deleted.append(pod)
        self.deleted_one.set()
        asyncio.get_running_loop().call_soon(self.event, "gone", pod, "deleted")


class ScriptedLink:
    """One worker's agent, as the test scripts it."""

    def __init__(self) -> None:
        self.events_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.nudged = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def nudge(self) -> None:
        self.nudged.set()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        self.nudged.set()
        while True:
            event = await self.events_in.get()
            yield event
            if event["type"] == "finished":
                return

    async def cancel(self) -> None:
        self.cancelled.set()

    async def close(self) -> None:
        pass

    def finish(self, job: JobId, state: str, *, end: int | None, code: int | None = 0) -> None:
        self.events_in.put_nowait({"type": "finished", "result": {
            "job_id": job, "state": state, "exit_code": code, "error": None,
            "started_at": time.time(), "finished_at": time.time(), "output_end": end,
            "output_records": 0,
        }})


class ModulePaths:
    """Where stored modules are: all the scheduler asks of the module store."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: ModuleHash) -> Path:
        return self.root / f"{sha256}.wasm"


class FakeData:
    """Offsets in a dict: what the scheduler asks of Kafka, and what it notes."""

    def __init__(self) -> None:
        self.ends: dict[tuple[str, int], int] = {}
        self.noted: list[tuple[str, int, int | None]] = []

    async def produce(
        self, topic: str, partition: int, records: Any, *, key: bytes | None = None
    ) -> tuple[int, int]:
        start = self.ends.get((topic, partition), 0)
        self.ends[(topic, partition)] = start + len(records)
        return start, start + len(records)

    async def end_offset(self, topic: str, partition: int) -> int:
        return self.ends.get((topic, partition), 0)

    def note_end(self, topic: str, partition: int, end: int | None) -> None:
        self.noted.append((topic, partition, end))
        if end is not None:
            self.ends[(topic, partition)] = end


@dataclass
class Harness:
    scheduler: Scheduler
    pool: Pool
    backend: ScriptedBackend
    data: FakeData
    store: MemoryJobStore
    files: JobFiles
    links: dict[PodName, ScriptedLink]
    task: asyncio.Task[None]

    async def submit(self, records: list[bytes] | None = None) -> Job:
        job = Job(id=new_job_id(), tenant=TENANT, module=MODULE, module_size=4,
                  limits=Limits(timeout_s=30, memory_mb=64), input_count=len(records or []))
        return await self.scheduler.submit(job, records or [])

    async def until(self, job_id: JobId, predicate: Any) -> Job:
        job = self.store.get(job_id)
        assert job is not None
        async with asyncio.timeout(10):
            while not predicate(job):
                job = await self.store.wait_change(job_id, job)
        return job

    async def link_of(self, job_id: JobId) -> ScriptedLink:
        """The link of the worker the job was handed to, once it was nudged."""
        job = await self.until(job_id, lambda j: j.pod is not None)
        assert job.pod is not None
        link = self.links[job.pod]
        async with asyncio.timeout(10):
            await link.nudged.wait()
        return link

    async def dispatched(self, *jobs: Job) -> None:
        """Let the dispatcher run until these jobs have left the queue."""
        async with asyncio.timeout(10):
            while not all(j.id in self.scheduler.running for j in jobs):
                await asyncio.sleep(0)

    def assert_released(self) -> None:
        assert self.scheduler.running == {}
        assert self.scheduler.active.get(TENANT, 0) == 0
        assert self.scheduler.leases.leased == 0


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    settings = make_settings(tmp_path, "127.0.0.1:1", pool__min_idle=2, pool__max_pods=4)
    settings.slots.root.mkdir(parents=True)
    backend = ScriptedBackend()
    pool = Pool(backend=backend, settings=settings.pool, slots_root=settings.slots.root,
                metrics=Metrics())
    modules = ModulePaths(tmp_path / "modules")
    modules.path(MODULE).parent.mkdir(parents=True, exist_ok=True)
    modules.path(MODULE).write_bytes(b"\0asm")
    store = MemoryJobStore()
    files = JobFiles(tmp_path / "jobs", fsync=False)
    links: dict[PodName, ScriptedLink] = {}

    def connect(worker: Worker) -> ScriptedLink:
        return links.setdefault(worker.pod, ScriptedLink())

    data = FakeData()
    scheduler = Scheduler(settings=settings, store=store, pool=pool, data=data,
                          modules=modules, files=files, metrics=Metrics(), connect=connect)
    await scheduler.start()
    await pool.start()
    task = asyncio.create_task(scheduler.run())
    await pool.wait_until(lambda: pool.figures()["idle"] == 2, 10)
    yield Harness(scheduler, pool, backend, data, store, files, links, task)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await pool.stop()


async def test_success_gives_back_quota_partition_and_worker(harness: Harness) -> None:
    job = await harness.submit([b"a", b"b"])
    link = await harness.link_of(job.id)
    running = await harness.until(job.id, lambda j: j.state is JobState.ASSIGNED)
    assert harness.scheduler.active[TENANT] == 1 and harness.scheduler.leases.leased == 1
    link.events_in.put_nowait({"type": "started", "ts": time.time()})
    link.finish(job.id, "succeeded", end=3)
    done = await harness.until(job.id, lambda j: j.state.terminal)
    assert done.state is JobState.SUCCEEDED and done.output is not None
    assert (done.output.start, done.output.end) == (0, 3)
    harness.assert_released()
    assert harness.backend.deleted == [running.pod]
    assert harness.data.noted[-1][1:] == (done.output.partition, 3)
    assert not harness.files.input_path(job.id).exists(), "the saved input was kept"


async def test_failure_is_released_like_success(harness: Harness) -> None:
    job = await harness.submit()
    link = await harness.link_of(job.id)
    link.finish(job.id, "failed", end=None, code=3)
    done = await harness.until(job.id, lambda j: j.state.terminal)
    assert (done.state, done.exit_code) == (JobState.FAILED, 3)
    harness.assert_released()
    assert harness.backend.deleted == [done.pod]
    # no output: the range is empty and the partition's end is its start
    assert done.output is not None and done.output.end == done.output.start
    assert harness.data.noted[-1][2] == done.output.start


async def test_cancel_while_queued_never_takes_a_worker(harness: Harness) -> None:
    harness.backend.claim_gate = asyncio.Event()
    first, second, third = [await harness.submit() for _ in range(3)]
    # two workers, both held in their claims: the third job waits in the queue
    await harness.dispatched(first, second)
    assert harness.scheduler.queue.size(TENANT) == 1
    cancelled = await harness.scheduler.cancel(third)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.error == "the job was cancelled before it started" and cancelled.pod is None
    assert harness.scheduler.queue.size(TENANT) == 0
    harness.backend.claim_gate.set()
    for job in (first, second):
        (await harness.link_of(job.id)).finish(job.id, "succeeded", end=None)
        await harness.until(job.id, lambda j: j.state.terminal)
    harness.assert_released()


async def test_cancel_during_the_claim_ends_it_before_delivery(harness: Harness) -> None:
    harness.backend.claim_gate = asyncio.Event()
    job = await harness.submit()
    await harness.dispatched(job)
    worker = harness.scheduler.running[job.id].worker
    cancelling = asyncio.create_task(harness.scheduler.cancel(job))
    await asyncio.sleep(0)
    harness.backend.claim_gate.set()
    done = await cancelling
    assert done.state is JobState.CANCELLED
    assert done.error == "the job was cancelled before it started"
    assert not harness.links[worker.pod].nudged.is_set(), "a cancelled job was delivered"
    async with asyncio.timeout(10):
        await harness.backend.deleted_one.wait()
    assert harness.backend.deleted == [worker.pod]
    harness.assert_released()


async def test_cancel_while_running_asks_the_agent_and_releases(harness: Harness) -> None:
    job = await harness.submit()
    link = await harness.link_of(job.id)
    link.events_in.put_nowait({"type": "started", "ts": time.time()})
    await harness.until(job.id, lambda j: j.state is JobState.RUNNING)
    cancelling = asyncio.create_task(harness.scheduler.cancel(job))
    async with asyncio.timeout(10):
        await link.cancelled.wait()
    link.finish(job.id, "cancelled", end=2, code=None)
    done = await cancelling
    assert done.state is JobState.CANCELLED
    harness.assert_released()
    assert harness.backend.deleted == [done.pod]


async def test_worker_death_ends_the_job_and_forgets_the_output_end(harness: Harness) -> None:
    job = await harness.submit()
    link = await harness.link_of(job.id)
    link.events_in.put_nowait({"type": "started", "ts": time.time()})
    link.events_in.put_nowait({"type": "output", "end": 2})
    running = await harness.until(job.id, lambda j: j.state is JobState.RUNNING)
    assert running.pod is not None
    harness.backend.event("gone", running.pod, "the worker process was killed by SIGKILL")
    done = await harness.until(job.id, lambda j: j.state.terminal)
    assert done.state is JobState.ERROR
    assert done.error == "the worker died: the worker process was killed by SIGKILL"
    harness.assert_released()
    # records of a dead worker may still land: the partition's end is unknown
    assert harness.data.noted[-1][2] is None


async def test_stopping_keeps_the_worker_and_the_record(harness: Harness) -> None:
    job = await harness.submit([b"x"])
    link = await harness.link_of(job.id)
    link.events_in.put_nowait({"type": "started", "ts": time.time()})
    running = await harness.until(job.id, lambda j: j.state is JobState.RUNNING)
    harness.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await harness.task
    harness.assert_released()
    assert harness.backend.deleted == [], "a stopping poold deleted a busy worker"
    after = harness.store.get(job.id)
    assert after is not None and after.state is JobState.RUNNING and after.pod == running.pod
    assert harness.files.load_input(job.id) == [b"x"], "the next start needs the input"


async def test_a_lost_claim_puts_the_job_back_with_its_input(harness: Harness) -> None:
    harness.backend.refuse_claims = 1
    job = await harness.submit([b"one", b"two"])
    link = await harness.link_of(job.id)
    assigned = await harness.until(job.id, lambda j: j.input is not None)
    assert assigned.input is not None and (assigned.input.start, assigned.input.end) == (0, 2)
    link.finish(job.id, "succeeded", end=None)
    done = await harness.until(job.id, lambda j: j.state.terminal)
    assert done.state is JobState.SUCCEEDED and done.attempts == 1
    harness.assert_released()


async def test_output_ends_follow_the_agent_reports(harness: Harness) -> None:
    job = await harness.submit()
    link = await harness.link_of(job.id)
    assigned = await harness.until(job.id, lambda j: j.output is not None)
    seen: list[int] = []

    async def follow() -> None:
        async for end in harness.scheduler.output_ends(assigned):
            seen.append(end)
            if end == 1:
                link.events_in.put_nowait({"type": "output", "end": 4})
            if end == 4:
                link.finish(job.id, "succeeded", end=6)

    following = asyncio.create_task(follow())
    link.events_in.put_nowait({"type": "output", "end": 1})
    async with asyncio.timeout(10):
        await following
    assert seen == [1, 4, 6]
    await harness.until(job.id, lambda j: j.state.terminal)
    harness.assert_released()


async def test_a_result_in_the_slot_ends_the_job_when_the_line_stays_silent(
    harness: Harness,
) -> None:
    """A line opened after the agent finished (and moved on to a fresh event log)
    never hears of the job: the result committed to the slot ends it anyway."""
    job = await harness.submit()
    await harness.link_of(job.id)  # nudged; the link will never say anything
    assigned = await harness.until(job.id, lambda j: j.pod is not None)
    assert assigned.pod is not None
    result = {"job_id": job.id, "state": "succeeded", "exit_code": 0, "error": None,
              "started_at": time.time(), "finished_at": time.time(), "output_end": None,
              "output_records": 0}
    slot = Slot.of(harness.scheduler.settings.slots.root, assigned.pod)
    write_json_atomic(slot.result_json, result, fsync=False)
    done = await harness.until(job.id, lambda j: j.state.terminal)
    assert done.state is JobState.SUCCEEDED
    harness.assert_released()
