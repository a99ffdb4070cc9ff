"""Run one scenario against a fresh poold: start it, warm it, submit, collect rows.

Arrivals:

- ``sequential``: the next job is submitted when the previous one's terminal
  record is in hand;
- ``all_at_once``: every job is submitted as fast as the client can, with at
  most ``max_in_flight`` jobs open (submitted, end not yet seen) at a time;
- ``even``: one job every ``1/rate`` s; ``poisson``: exponential gaps with
  mean ``1/rate`` s (seeded). Both also respect ``max_in_flight``, so an
  overloaded server delays arrivals rather than piling up connections.
"""

from __future__ import annotations

import asyncio
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp

from .client import Api, Outcome, ms_between
from .daemon import Poold
from .fixtures import expected_output, input_records, load_module
from .scenario import STUCK_AFTER, Scenario

SUCCEEDED = "succeeded"


@dataclass
class JobRow:
    """One row of jobs.csv."""

    scenario: str
    phase: str
    """``measure``, or ``warmup`` (kept in the CSV, left out of the statistics)."""
    seq: int
    tenant: str
    job_id: str | None
    state: str
    """The record's state, or the client's verdict: ``client_timeout`` (not seen ending
    within ``job_deadline_s``; cancelled), ``not_terminal``, ``client_error`` (the API
    or the network failed), ``not_run`` (the phase stopped first)."""
    exit_code: int | None
    warm: bool | None
    pod: str | None
    submitted_at: str | None
    assigned_at: str | None
    started_at: str | None
    finished_at: str | None
    wait_ms: float | None
    """submitted → started, from the record."""
    assign_ms: float | None
    """submitted → assigned, from the record's timestamps."""
    run_ms: float | None
    e2e_ms: float | None
    """Client clock: just before POST /v1/jobs → terminal record received."""
    submit_ms: float | None
    """Client clock: the POST /v1/jobs round trip."""
    sent_s: float
    """Client clock: when the POST was sent, seconds since the phase began."""
    done_s: float | None
    """Client clock: when the terminal record arrived, seconds since the phase began."""
    output_ok: bool | None
    """Output matched the module's known transform of the input (None: not checked)."""
    follow_breaks: int
    """``output?follow=true`` responses poold cut off before their end."""
    error: str | None

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def as_csv(self) -> dict[str, Any]:
        return {
            name: ("" if value is None else value)
            for name, value in ((f.name, getattr(self, f.name)) for f in fields(self))
        }


@dataclass
class ScenarioRun:
    scenario: Scenario
    rows: list[JobRow] = field(default_factory=list)
    daemon: dict[str, Any] = field(default_factory=dict)
    config: str = ""
    pool_before: dict[str, Any] = field(default_factory=dict)
    module_sha256: str = ""
    wall_s: float = 0.0
    """Run time of the whole scenario, daemon start to stop."""
    client_cpu_s: float = 0.0
    """CPU time the bench process itself used during the measured phase."""
    poold_cpu_s: float | None = None
    """CPU time of poold and the descendants it waited for (workers, broker), whole life."""
    failure: str | None = None
    """Set when the scenario could not run at all (poold did not start, ...)."""

    @property
    def measured(self) -> list[JobRow]:
        return [r for r in self.rows if r.phase == "measure"]


def _row(scenario: Scenario, phase: str, seq: int, tenant: str, outcome: Outcome,
         t0: float, expected: list[str] | None) -> JobRow:
    record = outcome.record or {}
    state = str(record.get("state", ""))
    error = record.get("error")
    if outcome.timed_out:
        state, error = "client_timeout", outcome.problem
    elif outcome.problem is not None:
        # submitted but its end never seen, or never submitted at all
        state = "not_terminal" if outcome.job_id else "client_error"
        error = outcome.problem
    output_ok = None
    if expected is not None and outcome.output is not None and state == SUCCEEDED:
        output_ok = outcome.output == expected
        if not output_ok and error is None:
            error = f"output differs: got {outcome.output[:3]!r}..., want {expected[:3]!r}..."
    return JobRow(
        scenario=scenario.name, phase=phase, seq=seq, tenant=tenant, job_id=outcome.job_id,
        state=state, exit_code=record.get("exit_code"), warm=record.get("warm"),
        pod=record.get("pod"), submitted_at=record.get("submitted_at"),
        assigned_at=record.get("assigned_at"), started_at=record.get("started_at"),
        finished_at=record.get("finished_at"), wait_ms=record.get("wait_ms"),
        assign_ms=ms_between(record.get("submitted_at"), record.get("assigned_at")),
        run_ms=record.get("run_ms"),
        e2e_ms=None if outcome.done is None else round((outcome.done - outcome.sent) * 1000, 3),
        submit_ms=(None if outcome.accepted is None
                   else round((outcome.accepted - outcome.sent) * 1000, 3)),
        sent_s=round(outcome.sent - t0, 6),
        done_s=None if outcome.done is None else round(outcome.done - t0, 6),
        output_ok=output_ok, follow_breaks=outcome.follow_breaks, error=error,
    )


def _arrival_times(scenario: Scenario) -> list[float]:
    """Offsets (s) from the phase start at which each job is due."""
    n = scenario.jobs
    if scenario.arrival in ("sequential", "all_at_once") or scenario.rate is None:
        return [0.0] * n
    if scenario.arrival == "even":
        return [i / scenario.rate for i in range(n)]
    rng = random.Random(scenario.seed)  # noqa: S311 - arrival times, not secrets
    times, t = [], 0.0
    for _ in range(n):
        times.append(t)
        t += rng.expovariate(scenario.rate)
    return times


class Driver:
    """Submits one phase's jobs against a running poold."""

    def __init__(self, scenario: Scenario, apis: list[tuple[str, Api]], sha256: str) -> None:
        self.scenario = scenario
        self.apis = apis
        self.sha256 = sha256
        self._stuck = 0

    def _body(self, seq: int) -> tuple[dict[str, Any], list[str] | None]:
        s = self.scenario
        records = input_records(seq, s.input_records)
        body: dict[str, Any] = {"module": self.sha256}
        if records:
            body["input"] = records
        if s.job_timeout_s is not None:
            body["limits"] = {"timeout_s": s.job_timeout_s}
        return body, expected_output(s.module, records)

    async def one(self, phase: str, seq: int, t0: float) -> JobRow:
        tenant, api = self.apis[seq % len(self.apis)]
        body, expected = self._body(seq)
        outcome = await api.run(body, deadline_s=self.scenario.job_deadline_s,
                                check_output=bool(expected))
        row = _row(self.scenario, phase, seq, tenant, outcome, t0, expected)
        self._stuck = self._stuck + 1 if outcome.timed_out else 0
        return row

    @property
    def stuck(self) -> bool:
        """``STUCK_AFTER`` jobs in a row were not seen ending: poold is stuck."""
        return self._stuck >= STUCK_AFTER

    async def sequential(self, phase: str, first: int, count: int,
                         progress: Callable[[int], None] = lambda _: None) -> list[JobRow]:
        """One job at a time, until done, ``timeout_s`` has passed or poold is stuck."""
        t0 = time.perf_counter()
        deadline = t0 + self.scenario.timeout_s
        rows: list[JobRow] = []
        for i in range(count):
            if time.perf_counter() > deadline or self.stuck:
                rows.extend(self._not_run(phase, first + j, t0) for j in range(i, count))
                break
            rows.append(await self.one(phase, first + i, t0))
            progress(len(rows))
        return rows

    async def measure(self, progress: Callable[[int], None]) -> list[JobRow]:
        s = self.scenario
        if s.arrival == "sequential":
            return await self.sequential("measure", s.warmup_jobs, s.jobs, progress)
        return await self._concurrent(s.warmup_jobs, progress)

    def _not_run(self, phase: str, seq: int, t0: float) -> JobRow:
        tenant, _ = self.apis[seq % len(self.apis)]
        why = (f"{STUCK_AFTER} jobs in a row did not end within job_deadline_s" if self.stuck
               else f"the phase ran past timeout_s ({self.scenario.timeout_s:g} s)")
        outcome = Outcome(job_id=None, record=None, output=None, sent=t0, accepted=None,
                          done=None, problem=f"not run or not finished: {why}")
        row = _row(self.scenario, phase, seq, tenant, outcome, t0, None)
        row.state = "not_run"
        return row

    async def _concurrent(self, first: int, progress: Callable[[int], None]) -> list[JobRow]:
        s = self.scenario
        gate = asyncio.Semaphore(s.max_in_flight)
        done: dict[int, JobRow] = {}
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()

        async def job(seq: int) -> None:
            try:
                done[seq] = await self.one("measure", seq, t0)
                progress(len(done))
            finally:
                gate.release()

        async def submit_all() -> None:
            for i, due in enumerate(_arrival_times(s)):
                delay = t0 + due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.acquire()
                if self.stuck:
                    gate.release()
                    break
                task = asyncio.create_task(job(first + i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks))

        try:
            async with asyncio.timeout(s.timeout_s):
                await submit_all()
        except TimeoutError:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*list(tasks), return_exceptions=True)
        return [done.get(first + i) or self._not_run("measure", first + i, t0)
                for i in range(s.jobs)]


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _progress(name: str, total: int) -> Callable[[int], None]:
    step = max(1, total // 10)
    is_tty = sys.stderr.isatty()

    def report(done: int) -> None:
        if done == total or (is_tty and done % step == 0):
            end = "\n" if done == total else "\r"
            print(f"  {name}: {done}/{total} jobs", end=end, file=sys.stderr, flush=True)

    return report


async def run_scenario(scenario: Scenario, logs_dir: Path) -> ScenarioRun:
    """Start poold for ``scenario``, measure it, stop it. Never raises for poold trouble:
    a scenario that cannot run comes back with ``failure`` set. ``logs_dir`` (which
    must exist) receives poold's log as ``<scenario>.poold.log``."""
    run = ScenarioRun(scenario)
    began = time.monotonic()
    base = Path(scenario.source).parent if scenario.source else None
    wasm = load_module(scenario.module, base=base)
    print(f"{scenario.name}: starting poold (min_idle {scenario.pool.min_idle}, "
          f"max_pods {scenario.pool.max_pods}) ...", file=sys.stderr, flush=True)
    children = _cpu(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix=f"poold-bench-{scenario.name}-") as tmp:
        poold = Poold(scenario, Path(tmp), logs_dir / f"{scenario.name}.poold.log")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        try:
            async with poold, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=scenario.max_in_flight * 3 + 16),
                timeout=timeout,
            ) as session:
                run.config = poold.config_text()
                apis = [(t.name, Api(session, poold.url, t.token)) for t in poold.tenants]
                run.module_sha256 = await apis[0][1].upload(wasm)
                for _, api in apis[1:]:
                    await api.upload(wasm)
                token = poold.tenants[0].token
                await poold.wait_pool_settled(session, token)
                driver = Driver(scenario, apis, run.module_sha256)
                if scenario.warmup_jobs:
                    run.rows.extend(await driver.sequential("warmup", 0, scenario.warmup_jobs))
                    await poold.wait_pool_settled(session, token)
                run.pool_before = await apis[0][1].pool()
                print(f"{scenario.name}: poold ready in {poold.start_s or 0:.1f} s, pool "
                      f"{run.pool_before}; {scenario.jobs} jobs, {scenario.arrival}",
                      file=sys.stderr, flush=True)
                cpu = _cpu(resource.RUSAGE_SELF)
                run.rows.extend(await driver.measure(_progress(scenario.name, scenario.jobs)))
                run.client_cpu_s = round(_cpu(resource.RUSAGE_SELF) - cpu, 3)
        except Exception as e:  # a broken scenario must not stop the others
            run.failure = f"{type(e).__name__}: {e}"
            print(f"{scenario.name}: FAILED: {run.failure}", file=sys.stderr, flush=True)
        finally:
            run.daemon = poold.report()
        run.wall_s = time.monotonic() - began
    if poold.exit_code is not None:
        run.poold_cpu_s = round(_cpu(resource.RUSAGE_CHILDREN) - children, 3)
    if poold.leftover_slots:
        print(f"{scenario.name}: warning: slots left after poold stopped: "
              f"{poold.leftover_slots}", file=sys.stderr, flush=True)
    return run
