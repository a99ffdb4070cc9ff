"""``pool.min_idle = "auto"``: the pool follows arrivals, against the scripted
backend, with a clock the test moves (arrival rates and start times); and one
real daemon started with it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from poold.config import PoolSettings
from poold.metrics import Metrics
from poold.sched.pool import Pool, WorkerState
from poold.sched.sizing import LONG_WINDOW_S
from poold.types import PodName
from tests.sched.test_pool import ScriptedBackend
from tests.support.daemon import Client, DaemonFactory
from tests.support.wasm_fixtures import module


class Backend(ScriptedBackend):
    """Also says when the pool created a worker."""

    def __init__(self) -> None:
        super().__init__(auto_ready=False)
        self.changed = asyncio.Event()

    async def create(self, pod: PodName) -> None:
        await super().create(pod)
        self.changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, pool: Pool, backend: Backend, clock: Clock) -> None:
        self.pool, self.backend, self.clock = pool, backend, clock

    async def start_all(self, *, taking_s: float) -> None:
        """Every starting worker becomes ready ``taking_s`` later (on the test clock)."""
        self.clock.now += taking_s
        for pod in self.backend.created:
            worker = self.pool.workers.get(pod)
            if worker is not None and worker.state is WorkerState.STARTING:
                self.backend.ready(pod)

    def arrive(self, *, rate: float, for_s: float) -> None:
        step = 1 / rate
        for _ in range(round(rate * for_s)):
            self.pool.arrived()
            self.clock.now += step

    async def settle(self, idle: int) -> None:
        """Let the controller create what the target asks, start it, wait for ``idle``."""
        for _ in range(10):
            self.pool.poke()
            await self.backend.until(
                lambda: self.pool.count(WorkerState.IDLE) >= idle or any(
                    self.pool.workers[p].state is WorkerState.STARTING
                    for p in self.backend.created if p in self.pool.workers))
            if self.pool.count(WorkerState.IDLE) >= idle:
                return
            await self.start_all(taking_s=0.5)
        raise AssertionError(f"the pool did not reach {idle} idle: {self.pool.figures()}")


@pytest.fixture(params=[0.0])
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    backend = Backend()
    clock = Clock()
    settings = PoolSettings.model_validate({
        "min_idle": "auto", "min_idle_floor": 1, "max_pods": 16, "max_starting": 16,
        "idle_ttl_s": request.param})
    pool = Pool(backend=backend, settings=settings, slots_root=tmp_path,
                metrics=Metrics(), clock=clock)
    await pool.start()
    try:
        yield Rig(pool, backend, clock)
    finally:
        await pool.stop()


async def test_auto_follows_the_arrival_rate_and_the_start_time(rig: Rig) -> None:
    pool = rig.pool
    # no arrivals: the floor; the first worker takes 0.5 s to start
    await rig.backend.until(lambda: len(rig.backend.created) == 1)
    await rig.start_all(taking_s=0.5)
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 1, 5)
    assert pool.figures()["idle_target"] == 1
    assert len(rig.backend.created) == 1

    # 10 jobs/s with 0.5 s starts: need 5, + 2·√5 → 10 idle
    rig.arrive(rate=10, for_s=2)
    figures = pool.figures()
    assert figures["idle_target"] == 10, figures
    assert figures["sizing"]["arrival_rate_short_per_s"] == pytest.approx(10, abs=0.5)
    assert figures["sizing"]["start_p90_s"] == pytest.approx(0.5)
    assert "start p90 0.50 s" in figures["sizing"]["reason"]
    await rig.settle(idle=10)
    assert len(rig.backend.created) == 10

    # a faster rate raises it at once, up to max_pods
    rig.arrive(rate=40, for_s=1)
    assert pool.figures()["idle_target"] == 16
    assert pool.figures()["sizing"]["bound"] == "max_pods"
    await rig.settle(idle=16)
    assert len(pool.workers) == 16

    # /metrics says the same as GET /v1/pool (the clock has not moved since the last export)
    figures = pool.figures()
    text = pool.metrics.render().decode()
    assert f"poold_pool_idle_target_workers {float(figures['idle_target'])}" in text
    start = figures["sizing"]["start_p90_s"]
    assert f'poold_pool_sizing_start_seconds{{quantile="0.9"}} {start}' in text
    assert 'poold_pool_arrival_rate_per_second{window="short"}' in text
    # and why: the need (rate x start p90) the margin (2 standard deviations) is added to
    need = re.search(r"^poold_pool_sizing_need_workers (\S+)$", text, re.MULTILINE)
    assert need is not None and float(need[1]) > 0
    assert float(need[1]) == pytest.approx(figures["sizing"]["need"], abs=1e-3)
    assert "poold_pool_sizing_margin 2.0" in text

    # the load stops: once the long window has emptied the target is the floor again
    rig.clock.now += LONG_WINDOW_S + 0.1
    figures = pool.figures()
    assert figures["idle_target"] == 1
    assert figures["sizing"]["bound"] == "floor"


async def test_a_pause_within_a_burst_keeps_the_pool(rig: Rig) -> None:
    pool = rig.pool
    await rig.backend.until(lambda: len(rig.backend.created) == 1)
    await rig.start_all(taking_s=0.5)
    rig.arrive(rate=10, for_s=2)
    raised = pool.figures()["idle_target"]
    assert raised > 1
    rig.clock.now += 3  # out of the short window, still in the long one
    figures = pool.figures()
    assert figures["sizing"]["arrival_rate_short_per_s"] == 0
    # the long window's 20 arrivals in 10 s still ask for 2/s · 0.5 s = 1, + 2·√1 → 3..4
    assert 1 < figures["idle_target"] < raised, figures


async def test_a_fixed_min_idle_ignores_arrivals(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    clock = Clock()
    pool = Pool(backend=backend, slots_root=tmp_path, metrics=Metrics(), clock=clock,
                settings=PoolSettings.model_validate({"min_idle": 2, "max_pods": 8}))
    await pool.start()
    try:
        await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 2, 5)
        for _ in range(100):
            pool.arrived()
        clock.now += 0.5
        figures = pool.figures()
        assert figures["idle_target"] == 2 and figures["min_idle"] == 2
        assert figures["target"] == 2
        assert "reason" not in figures["sizing"]
    finally:
        await pool.stop()


@pytest.mark.parametrize("rig", [0.2], indirect=True)
async def test_surplus_idle_workers_retire_longest_idle_first_once_the_load_stops(
        rig: Rig) -> None:
    pool = rig.pool
    await rig.backend.until(lambda: len(rig.backend.created) == 1)
    await rig.start_all(taking_s=0.5)
    rig.arrive(rate=10, for_s=2)
    await rig.settle(idle=10)
    assert rig.backend.deleted == [], "workers within the target stay however long idle"
    youngest = max((w for w in pool.workers.values()), key=lambda w: w.ready_at or 0.0)

    rig.clock.now += LONG_WINDOW_S + 0.1  # the load stopped: the target is the floor
    pool.poke()
    # after idle_ttl_s (0.2 s, real time) with jitter, all but the floor go
    await pool.wait_until(lambda: len(pool.workers) == 1, 10)
    assert len(rig.backend.deleted) == 9
    assert list(pool.workers) == [youngest.pod], "the longest idle went first"
    text = pool.metrics.render().decode()
    assert 'poold_pool_worker_retirements_total{reason="surplus"} 9.0' in text
    assert "poold_pool_worker_creations_total 10.0" in text
    assert len(rig.backend.created) == 10, "nothing retired was replaced"


async def test_a_daemon_with_auto_sizing_starts_with_its_floor_idle_and_runs_warm(
        start_daemon: DaemonFactory, session: aiohttp.ClientSession) -> None:
    # the fixture waits for the pool to fill to what the daemon aims to keep: with
    # "auto" that is the floor, not a number in the settings
    daemon = await start_daemon(pool__min_idle="auto", pool__min_idle_floor=2)
    assert daemon.pool is not None
    figures = daemon.pool.figures()
    assert figures["min_idle"] == "auto" and figures["idle_target"] == 2, figures
    assert figures["idle"] >= 2, figures
    job = await Client(daemon, session, "alpha").run(module("upper"), input=["auto"])
    assert job["state"] == "succeeded" and job["warm"] is True, job
