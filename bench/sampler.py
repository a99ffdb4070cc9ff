"""The pool over time: ``GET /v1/pool`` at 10 Hz and poold's memory at 2 Hz.

A sampler runs beside every scenario from the moment poold is ready until it
is stopped. Three loops, so a slow answer from one never delays the others:

- the pool loop asks the public API (the same figures a user sees), adding
  one small request per 100 ms to poold's load; its rows have the pool
  columns set and the memory columns empty;
- the memory loop reads poold's process tree from /proc in a thread (so the
  event loop that times the jobs is not held up); its rows have the memory
  columns set and the pool columns empty;
- the counters loop reads poold's worker creations and surplus retirements
  from ``/metrics`` at 2 Hz (the churn of ``min_idle = "auto"``).

Both are bounded: past ``max_samples`` rows of a loop every other one of its
rows is dropped and its interval doubled, so a long scenario keeps its whole
span at a coarser grain.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import aiohttp

from .client import Api, ApiError
from .procmem import TreeMemory, read_tree

INTERVAL_S = 0.1
MEMORY_INTERVAL_S = 0.5
MAX_SAMPLES = 4000
"""Per loop."""


@dataclass
class PoolSample:
    """One row of pool.csv."""

    scenario: str
    t_s: float
    """Seconds since the scenario's clock origin (when poold answered ready)."""
    phase: str
    idle: int | None = None
    busy: int | None = None
    starting: int | None = None
    deleting: int | None = None
    target: int | None = None
    idle_target: int | None = None
    """Idle workers poold keeps now (``min_idle``, or measured with ``"auto"``)."""
    rate_short: float | None = None
    """Arrivals per second over poold's short window (its ``sizing`` figures)."""
    creations: float | None = None
    """Workers created so far (/metrics, on the counters loop's rows)."""
    surplus_retired: float | None = None
    """Surplus idle workers retired so far (/metrics)."""
    rss_mib: float | None = None
    """Sum of VmRSS over poold's process tree (this sample read memory)."""
    pss_mib: float | None = None
    """Sum of PSS over the same processes."""
    workers_rss_mib: float | None = None
    workers_pss_mib: float | None = None
    procs: int | None = None
    daemon_cpu_s: float | None = None
    """CPU seconds the poold process itself (not its workers or broker) has used."""

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def as_csv(self) -> dict[str, Any]:
        return {k: ("" if v is None else v) for k, v in asdict(self).items()}


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 2)


class Sampler:
    """``async with Sampler(...)`` samples until the block ends."""

    def __init__(self, scenario: str, api: Api, pid: int | None, origin: float,
                 *, interval_s: float = INTERVAL_S, memory_interval_s: float = MEMORY_INTERVAL_S,
                 max_samples: int = MAX_SAMPLES) -> None:
        self.scenario = scenario
        self.api = api
        self.pid = pid
        self.origin = origin
        self.interval_s = interval_s
        self.memory_interval_s = memory_interval_s
        self.max_samples = max_samples
        self.phase = "setup"
        self.errors = 0
        self._pool_rows: list[PoolSample] = []
        self._memory_rows: list[PoolSample] = []
        self._counter_rows: list[PoolSample] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def samples(self) -> list[PoolSample]:
        """Pool rows and memory rows in time order."""
        return sorted(self._pool_rows + self._memory_rows + self._counter_rows,
                      key=lambda s: s.t_s)

    def _now(self) -> float:
        return round(time.perf_counter() - self.origin, 4)

    async def pool_once(self) -> PoolSample | None:
        t = self._now()
        try:
            async with asyncio.timeout(2.0):
                figures = await self.api.pool()
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError):
            self.errors += 1
            return None
        return PoolSample(
            scenario=self.scenario, t_s=t, phase=self.phase,
            idle=figures.get("idle"), busy=figures.get("busy"),
            starting=figures.get("starting"), deleting=figures.get("deleting"),
            target=figures.get("target"), idle_target=figures.get("idle_target"),
            rate_short=(figures.get("sizing") or {}).get("arrival_rate_short_per_s"),
        )

    async def counters_once(self) -> PoolSample | None:
        t = self._now()
        try:
            async with asyncio.timeout(2.0):
                counters = await self.api.pool_counters()
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError):
            self.errors += 1
            return None
        return PoolSample(scenario=self.scenario, t_s=t, phase=self.phase,
                          creations=counters["creations"],
                          surplus_retired=counters["surplus_retired"])

    async def memory_once(self) -> PoolSample | None:
        if self.pid is None:
            return None
        t = self._now()
        try:
            memory: TreeMemory = await asyncio.to_thread(read_tree, self.pid)
        except OSError:
            return None
        if not memory.procs:
            return None
        return PoolSample(
            scenario=self.scenario, t_s=t, phase=self.phase,
            rss_mib=_mib(memory.rss_kib), pss_mib=_mib(memory.pss_kib),
            workers_rss_mib=_mib(memory.rss_by_role.get("worker", 0)),
            workers_pss_mib=_mib(memory.pss_by_role.get("worker", 0)
                                 if memory.pss_kib is not None else None),
            procs=memory.procs,
            daemon_cpu_s=round(memory.cpu_by_role.get("poold", 0.0), 3),
        )

    async def _loop(self, rows: list[PoolSample], interval: float,
                    once: Callable[[], Awaitable[PoolSample | None]]) -> None:
        next_at = time.perf_counter()
        while True:
            sample = await once()
            if sample is not None:
                rows.append(sample)
            if len(rows) >= self.max_samples:
                rows[:] = rows[::2]
                interval *= 2
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay < 0:  # fell behind: do not try to catch up with a burst
                next_at = time.perf_counter()
                delay = 0
            await asyncio.sleep(delay)

    async def __aenter__(self) -> Sampler:
        self._tasks = [
            asyncio.create_task(self._loop(self._pool_rows, self.interval_s, self.pool_once),
                                name=f"pool-sampler-{self.scenario}"),
            asyncio.create_task(self._loop(self._memory_rows, self.memory_interval_s,
                                           self.memory_once),
                                name=f"memory-sampler-{self.scenario}"),
            asyncio.create_task(self._loop(self._counter_rows, self.memory_interval_s,
                                           self.counters_once),
                                name=f"counter-sampler-{self.scenario}"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
