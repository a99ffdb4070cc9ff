"""The pool controller against a scripted backend: targets, caps, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from poold.backends.base import EventSink, WorkerEvent
from poold.config import PoolSettings
from poold.metrics import Metrics
from poold.sched.pool import Pool, WorkerState
from poold.types import JobId, PodName, TenantName


class ScriptedBackend:
    """Workers become ready when the test says so (or at once with ``auto_ready``)."""

    name = "scripted"

    def __init__(self, *, auto_ready: bool = True) -> None:
        self.auto_ready = auto_ready
        self.created: list[PodName] = []
        self.deleted: list[PodName] = []
        self.sink: EventSink | None = None
        self.claims: dict[PodName, JobId] = {}

    async def start(self, sink: EventSink) -> None:
        self.sink = sink

    async def stop(self) -> None:
        pass

    async def create(self, pod: PodName) -> None:
        self.created.append(pod)
        if self.auto_ready:
            asyncio.get_running_loop().call_soon(self.ready, pod)

    def ready(self, pod: PodName) -> None:
        assert self.sink is not None
        self.sink(WorkerEvent("ready", pod, endpoint="http://127.0.0.1:1"))

    def gone(self, pod: PodName, reason: str = "killed") -> None:
        assert self.sink is not None
        self.sink(WorkerEvent("gone", pod, reason=reason))

    async def claim(self, pod: PodName, job: JobId) -> bool:
        if pod in self.claims:
            return False
        self.claims[pod] = job
        return True

    async def delete(self, pod: PodName) -> None:
        self.deleted.append(pod)
        asyncio.get_running_loop().call_soon(self.gone, pod, "deleted")


def settings(**kw: object) -> PoolSettings:
    base: dict[str, object] = {"min_idle": 2, "max_pods": 4, "max_starting": 2,
                               "failure_backoff_s": 0.01, "failure_backoff_max_s": 0.05}
    base.update(kw)
    return PoolSettings.model_validate(base)


@pytest.fixture
async def make_pool(tmp_path: Path) -> AsyncIterator[object]:
    pools: list[Pool] = []

    async def make(backend: ScriptedBackend, **kw: object) -> Pool:
        pool = Pool(backend=backend, settings=settings(**kw), slots_root=tmp_path,
                    metrics=Metrics())
        pools.append(pool)
        await pool.start()
        return pool

    yield make
    for pool in pools:
        await pool.stop()


async def test_keeps_min_idle_and_slots_exist(make_pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backend = ScriptedBackend()
    pool: Pool = await make_pool(backend)
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 2, 5)
    assert len(backend.created) == 2
    for pod in backend.created:
        assert (tmp_path / pod / "in").is_dir() and (tmp_path / pod / "out").is_dir()


async def test_used_worker_is_replaced_and_its_slot_removed(make_pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backend = ScriptedBackend()
    pool: Pool = await make_pool(backend)
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 2, 5)
    worker = pool.take_idle()
    assert worker is not None
    assert await pool.claim(worker, JobId("j-1"))
    await pool._reconcile()
    assert len(backend.created) == 2, "a replacement competed with the job's start"
    pool.settled(worker)  # the job started
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 2, 5)
    assert len(backend.created) == 3, "a replacement starts while the job runs"
    await pool.recycle(worker)
    await pool.wait_until(lambda: worker.pod not in pool.workers, 5)
    assert backend.deleted == [worker.pod]
    assert not (tmp_path / worker.pod).exists()
    assert pool.count(WorkerState.IDLE) == 2


async def test_never_more_than_max_pods(make_pool) -> None:  # type: ignore[no-untyped-def]
    backend = ScriptedBackend()
    demand = 10
    pool: Pool = await make_pool(backend)
    pool.demand = lambda: demand
    pool.poke()
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 4, 5)
    busy = [pool.take_idle() for _ in range(4)]
    assert all(busy)
    pool.poke()
    # the controller has had its turn; nothing beyond the cap was created
    await pool.wait_until(lambda: pool.target() == 4, 5)
    await asyncio.sleep(0)
    assert len(pool.workers) == 4
    assert len(backend.created) == 4


async def test_worker_not_ready_in_time_is_replaced_and_counted(make_pool) -> None:  # type: ignore[no-untyped-def]
    backend = ScriptedBackend(auto_ready=False)
    pool: Pool = await make_pool(backend, start_timeout_s=0.05, min_idle=1)
    await pool.wait_until(lambda: len(backend.deleted) >= 1, 5)
    first = backend.created[0]
    assert backend.deleted[0] == first
    await pool.wait_until(lambda: len(backend.created) >= 2, 5)
    text = pool.metrics.render().decode()
    assert 'poold_worker_failures_total{reason="start_timeout"}' in text


async def test_dead_idle_worker_is_replaced(make_pool) -> None:  # type: ignore[no-untyped-def]
    backend = ScriptedBackend()
    pool: Pool = await make_pool(backend)
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 2, 5)
    victim = backend.created[0]
    backend.gone(victim, "OOMKilled")
    await pool.wait_until(
        lambda: pool.count(WorkerState.IDLE) == 2 and victim not in pool.workers, 5
    )
    assert len(backend.created) == 3
    assert 'reason="idle_lost"' in pool.metrics.render().decode()


async def test_busy_worker_death_reaches_its_job(make_pool) -> None:  # type: ignore[no-untyped-def]
    backend = ScriptedBackend()
    pool: Pool = await make_pool(backend)
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 2, 5)
    worker = pool.take_idle()
    assert worker is not None and worker.lost is not None
    backend.gone(worker.pod, "Evicted")
    assert await asyncio.wait_for(worker.lost, 5) == "Evicted"


async def test_failed_starts_back_off_instead_of_looping(make_pool) -> None:  # type: ignore[no-untyped-def]
    backend = ScriptedBackend(auto_ready=False)
    pool: Pool = await make_pool(
        backend, min_idle=1, start_timeout_s=0.01, failure_backoff_s=0.2,
        failure_backoff_max_s=0.2,
    )
    await pool.wait_until(lambda: len(backend.deleted) >= 2, 5)
    # each failure waits 0.2 s before the next creation: a hot loop would have made hundreds
    assert len(backend.created) <= 4


async def test_lost_claim_leaves_the_worker_to_its_winner(make_pool) -> None:  # type: ignore[no-untyped-def]
    backend = ScriptedBackend()
    pool: Pool = await make_pool(backend)
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 2, 5)
    worker = pool.take_idle()
    assert worker is not None
    backend.claims[worker.pod] = JobId("j-someone-else")
    assert not await pool.claim(worker, JobId("j-mine"))
    assert worker.pod not in backend.deleted, "never delete a pod under someone else's job"
    assert worker.pod not in pool.workers
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 2, 5)


class ReusingBackend(ScriptedBackend):
    """A backend that can hand a claimed worker back for another job (as the local one)."""

    async def release_claim(
        self, pod: PodName, *, job: JobId, tenant: TenantName, jobs: int
    ) -> bool:
        return self.claims.pop(pod, None) == job


async def test_a_hot_worker_takes_only_its_own_tenants_jobs(make_pool) -> None:  # type: ignore[no-untyped-def]
    backend = ReusingBackend()
    pool: Pool = await make_pool(backend, reuse="tenant", hot_idle_ttl_s=0)
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 2, 5)
    worker = pool.take_idle(TenantName("a"))
    assert worker is not None and await pool.claim(worker, JobId("j-1"))
    assert pool.can_reuse(worker)
    await pool.reuse(worker, TenantName("a"))
    assert pool.figures()["hot"] == 1 and worker.state is WorkerState.IDLE
    other = pool.take_idle(TenantName("b"))
    assert other is not None and other is not worker, "another tenant got a hot worker"
    assert pool.take_idle(TenantName("a")) is worker
    assert worker.jobs == 2


async def test_hot_workers_make_way_when_the_pool_is_full(make_pool) -> None:  # type: ignore[no-untyped-def]
    backend = ReusingBackend()
    pool: Pool = await make_pool(backend, reuse="tenant", hot_idle_ttl_s=0, min_idle=2,
                                 max_pods=2)
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 2, 5)
    taken = [pool.take_idle(TenantName("a")) for _ in range(2)]
    for worker, job in zip(taken, ("j-1", "j-2"), strict=True):
        assert worker is not None and await pool.claim(worker, JobId(job))
        await pool.reuse(worker, TenantName("a"))
    assert pool.figures()["hot"] == 2 and not pool.has_idle_for(TenantName("b"))
    # tenant a has nothing queued: its hot workers go, fresh ones come for b
    assert pool.retire_hot(keep=lambda t: t == TenantName("b")) == 2
    await pool.wait_until(lambda: pool.has_idle_for(TenantName("b")), 5)
    assert pool.figures()["hot"] == 0


async def test_reuse_never_recycles(make_pool) -> None:  # type: ignore[no-untyped-def]
    backend = ReusingBackend()
    pool: Pool = await make_pool(backend)
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 2, 5)
    worker = pool.take_idle(TenantName("a"))
    assert worker is not None and await pool.claim(worker, JobId("j-1"))
    assert not pool.can_reuse(worker)


async def test_a_worker_the_backend_cannot_hand_back_is_recycled(make_pool) -> None:  # type: ignore[no-untyped-def]
    backend = ReusingBackend()
    pool: Pool = await make_pool(backend, reuse="tenant", hot_idle_ttl_s=0)
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 2, 5)
    worker = pool.take_idle(TenantName("a"))
    assert worker is not None and await pool.claim(worker, JobId("j-1"))
    backend.claims[worker.pod] = JobId("j-not-ours")  # the fenced hand-back will fail
    await pool.reuse(worker, TenantName("a"))
    assert worker.pod in backend.deleted and pool.figures()["hot"] == 0


@pytest.mark.parametrize("seen_first", [False, True], ids=["ready", "seen-then-ready"])
async def test_an_adopted_hot_worker_stays_its_tenants(make_pool, seen_first: bool) -> None:  # type: ignore[no-untyped-def]
    backend = ReusingBackend()
    pool: Pool = await make_pool(backend, reuse="tenant", hot_idle_ttl_s=0, min_idle=0)
    assert backend.sink is not None
    pod = PodName("poold-w-00000000aa")
    if seen_first:  # not ready when this daemon started: the tenant comes with "ready"
        backend.sink(WorkerEvent("seen", pod))
    backend.sink(WorkerEvent("ready", pod, endpoint="http://127.0.0.1:1",
                             tenant=TenantName("a"), jobs=3))
    assert pool.figures()["hot"] == 1 and pool.workers[pod].jobs == 3
    assert pool.take_idle(TenantName("b")) is None, "another tenant got a hot worker"
    taken = pool.take_idle(TenantName("a"))
    assert taken is not None and taken.pod == pod and taken.jobs == 4
