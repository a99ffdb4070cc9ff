"""Run one scenario against a fresh poold: start it, warm it, submit, collect rows.

Arrivals:

- ``sequential``: the next job is submitted when the previous one's terminal
  record is in hand;
- ``all_at_once``: every job is submitted as fast as the client can, with at
  most ``max_in_flight`` jobs open (submitted, end not yet seen) at a time;
- ``even``: one job every ``1/rate`` s; ``poisson``: exponential gaps with
  mean ``1/rate`` s (seeded); ``ramp_up`` / ``ramp_down``: the rate moves
  linearly from ``rate_from`` to ``rate_to`` over the phase (job ``i`` is due
  when the expected count of arrivals reaches ``i``). All of them respect
  ``max_in_flight``, so an overloaded server delays arrivals rather than
  piling up connections.

A scenario's phases, in order: ``warmup`` (optional, sequential), ``measure``
(mode ``""``, or ``fresh``, or ``cold``/``hot`` jobs mixed), then with
``aged_jobs`` an ``aging`` phase and a second ``measure`` (mode ``aged``),
then with ``tail_s`` a ``tail`` of that many seconds without jobs.
Every time (``sent_s``, ``done_s``, the pool samples, the phase bounds) is in
seconds since one clock origin per scenario: when poold answered ready.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import pstats
import random
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp

from .client import Api, Outcome, ms_between
from .daemon import Poold
from .fixtures import expected_output, input_records, load_module, with_variant
from .procmem import cpu_between, cpu_snapshot
from .sampler import PoolSample, Sampler
from .scenario import STUCK_AFTER, Scenario

SUCCEEDED = "succeeded"


@dataclass
class JobRow:
    """One row of jobs.csv."""

    scenario: str
    phase: str
    """``measure``, or ``warmup`` / ``aging`` (kept in the CSV, left out of the statistics)."""
    mode: str
    """What this measured job compares: ``fresh``/``aged`` daemon, compile cache
    ``cold``/``hot``; ``""`` when the scenario has one mode."""
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
    start_ms: float | None
    """assigned → started, from the record's timestamps."""
    run_ms: float | None
    e2e_ms: float | None
    """Client clock: just before POST /v1/jobs → terminal record received."""
    submit_ms: float | None
    """Client clock: the POST /v1/jobs round trip."""
    sent_s: float
    """Client clock: when the POST was sent, seconds since the scenario's origin."""
    done_s: float | None
    """Client clock: when the terminal record arrived, seconds since the scenario's origin."""
    output_ok: bool | None
    """Output matched the module's known transform of the input (None: not checked)."""
    follow_breaks: int
    """``output?follow=true`` responses poold cut off before their end."""
    module: str | None
    """sha256 of the module the job ran (differs per variant with ``new_module_every``)."""
    upload_ms: float | None
    """The ``PUT /v1/modules`` round trip of a fresh variant just before this job."""
    error: str | None
    usage_cpu_ms: float | None = None
    """The record's ``usage`` (docs/metrics.md): CPU time of the module's run only."""
    usage_memory_peak_bytes: int | None = None
    """The module's linear memory at its largest."""
    usage_rss_peak_bytes: int | None = None
    """The worker's peak resident memory during the job."""
    usage_fuel_consumed: int | None = None
    usage_stdin_records: int | None = None
    usage_stdin_bytes: int | None = None
    usage_stdout_records: int | None = None
    usage_stdout_bytes: int | None = None
    usage_stderr_bytes: int | None = None
    usage_artifacts_bytes: int | None = None

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
    origin: float = 0.0
    """perf_counter() when poold answered ready: time zero of every ``*_s`` figure."""
    phases: list[dict[str, Any]] = field(default_factory=list)
    """``{"phase", "mode", "start_s", "end_s"}`` per phase, in order."""
    samples: list[PoolSample] = field(default_factory=list)
    sampler_errors: int = 0
    load_avg: list[float] = field(default_factory=list)
    """The machine's 1-minute load average when the measurement began and ended
    (other work on the machine shows up here, not in the figures' labels)."""
    process_cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per measured mode: CPU seconds by process role (poold, broker, forkserver,
    worker, other, client) from /proc, over the measured phase only."""

    @property
    def measured(self) -> list[JobRow]:
        return [r for r in self.rows if r.phase == "measure"]

    def window(self, mode: str) -> tuple[float, float] | None:
        """Start and end (s) of the measured phase of ``mode``."""
        for p in self.phases:
            if p["phase"] == "measure" and p["mode"] == mode:
                return float(p["start_s"]), float(p["end_s"])
        return None


USAGE_COLUMNS = frozenset(c for c in JobRow.columns() if c.startswith("usage_"))


def _row(scenario: Scenario, phase: str, mode: str, seq: int, tenant: str, outcome: Outcome,
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
        scenario=scenario.name, phase=phase, mode=mode, seq=seq, tenant=tenant,
        job_id=outcome.job_id,
        state=state, exit_code=record.get("exit_code"), warm=record.get("warm"),
        pod=record.get("pod"), submitted_at=record.get("submitted_at"),
        assigned_at=record.get("assigned_at"), started_at=record.get("started_at"),
        finished_at=record.get("finished_at"), wait_ms=record.get("wait_ms"),
        assign_ms=ms_between(record.get("submitted_at"), record.get("assigned_at")),
        start_ms=ms_between(record.get("assigned_at"), record.get("started_at")),
        run_ms=record.get("run_ms"),
        e2e_ms=None if outcome.done is None else round((outcome.done - outcome.sent) * 1000, 3),
        submit_ms=(None if outcome.accepted is None
                   else round((outcome.accepted - outcome.sent) * 1000, 3)),
        sent_s=round(outcome.sent - t0, 6),
        done_s=None if outcome.done is None else round(outcome.done - t0, 6),
        output_ok=output_ok, follow_breaks=outcome.follow_breaks,
        module=record.get("module"), upload_ms=None, error=error,
        **{f"usage_{k}": v for k, v in (record.get("usage") or {}).items()
           if f"usage_{k}" in USAGE_COLUMNS},
    )


def ramp_times(n: int, rate_from: float, rate_to: float) -> list[float]:
    """Due times of ``n`` jobs whose rate moves linearly from ``rate_from`` to
    ``rate_to`` jobs/s. The ramp lasts ``T = 2n / (a + b)`` s (so that ``n`` jobs
    arrive in it); job ``i`` is due when ``a t + (b - a) t^2 / 2T`` reaches ``i``."""
    a, b = rate_from, rate_to
    span = 2 * n / (a + b)
    k = (b - a) / (2 * span)
    if abs(k) < 1e-12:
        return [i / a for i in range(n)]
    return [(-a + math.sqrt(max(0.0, a * a + 4 * k * i))) / (2 * k) for i in range(n)]


def arrival_times(scenario: Scenario, n: int | None = None) -> list[float]:
    """Offsets (s) from the phase start at which each job is due."""
    n = scenario.jobs if n is None else n
    if scenario.arrival in ("ramp_up", "ramp_down"):
        assert scenario.rate_from is not None
        assert scenario.rate_to is not None
        return ramp_times(n, scenario.rate_from, scenario.rate_to)
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
    """Submits one scenario's jobs against a running poold."""

    def __init__(self, scenario: Scenario, apis: list[tuple[str, Api]], sha256: str,
                 origin: float, run_deadline: float | None = None) -> None:
        self.scenario = scenario
        self.apis = apis
        self.sha256 = sha256
        self.origin = origin
        self.run_deadline = run_deadline
        """perf_counter() by which this scenario must be done (the run's time budget)."""
        self._stuck = 0

    def _phase_deadline(self) -> float:
        """When the phase starting now must stop: ``timeout_s``, or earlier if the
        run's time budget says so."""
        deadline = time.perf_counter() + self.scenario.timeout_s
        return deadline if self.run_deadline is None else min(deadline, self.run_deadline)

    @property
    def out_of_budget(self) -> bool:
        return self.run_deadline is not None and time.perf_counter() >= self.run_deadline

    def _body(self, seq: int) -> tuple[dict[str, Any], list[str] | None]:
        s = self.scenario
        records = input_records(seq, s.input_records)
        body: dict[str, Any] = {"module": self.sha256}
        if records:
            body["input"] = records
        if s.job_timeout_s is not None:
            body["limits"] = {"timeout_s": s.job_timeout_s}
        return body, expected_output(s.module, records)

    async def one(self, phase: str, mode: str, seq: int) -> JobRow:
        tenant, api = self.apis[seq % len(self.apis)]
        body, expected = self._body(seq)
        outcome = await api.run(body, deadline_s=self.scenario.job_deadline_s,
                                check_output=bool(expected))
        row = _row(self.scenario, phase, mode, seq, tenant, outcome, self.origin, expected)
        self._stuck = self._stuck + 1 if outcome.timed_out else 0
        return row

    @property
    def stuck(self) -> bool:
        """``STUCK_AFTER`` jobs in a row were not seen ending: poold is stuck."""
        return self._stuck >= STUCK_AFTER

    async def sequential(self, phase: str, mode: str, first: int, count: int,
                         progress: Callable[[int], None] = lambda _: None,
                         before: Callable[[int], Awaitable[tuple[str, float | None]]]
                         | None = None) -> list[JobRow]:
        """One job at a time, until done, ``timeout_s`` has passed or poold is stuck.
        ``before(i)``, if given, runs before job ``i`` and returns its mode and the
        upload time of a fresh module variant (outside the job's clock)."""
        deadline = self._phase_deadline()
        rows: list[JobRow] = []
        for i in range(count):
            if time.perf_counter() > deadline or self.stuck:
                rows.extend(self._not_run(phase, mode, first + j) for j in range(i, count))
                break
            job_mode, upload_ms = mode, None
            if before is not None:
                job_mode, upload_ms = await before(i)
            row = await self.one(phase, job_mode, first + i)
            row.upload_ms = upload_ms
            rows.append(row)
            progress(len(rows))
        return rows

    async def measure(self, mode: str, first: int,
                      progress: Callable[[int], None]) -> list[JobRow]:
        s = self.scenario
        if s.new_module_every:
            return await self.sequential("measure", mode, first, s.jobs, progress,
                                         before=self._variant)
        if s.arrival == "sequential":
            return await self.sequential("measure", mode, first, s.jobs, progress)
        return await self.concurrent("measure", mode, first, arrival_times(s),
                                     s.max_in_flight, progress)

    async def _variant(self, i: int) -> tuple[str, float | None]:
        """Before job ``i`` of a ``new_module_every`` scenario: every N-th job gets a
        fresh module variant, uploaded now; it meets the compile cache cold."""
        s = self.scenario
        if i % s.new_module_every:
            return "hot", None
        base = load_module(s.module, base=Path(s.source).parent if s.source else None)
        wasm = with_variant(base, f"{s.name}/{i}/{time.time_ns()}")
        began = time.perf_counter()
        sha = ""
        for _, api in self.apis:
            sha = await api.upload(wasm)
        self.sha256 = sha
        return "cold", round((time.perf_counter() - began) * 1000, 3)

    def _not_run(self, phase: str, mode: str, seq: int) -> JobRow:
        tenant, _ = self.apis[seq % len(self.apis)]
        why = (f"{STUCK_AFTER} jobs in a row did not end within job_deadline_s" if self.stuck
               else "the run's time budget (--budget-s) ran out" if self.out_of_budget
               else f"the phase ran past timeout_s ({self.scenario.timeout_s:g} s)")
        now = time.perf_counter()
        outcome = Outcome(job_id=None, record=None, output=None, sent=now, accepted=None,
                          done=None, problem=f"not run or not finished: {why}")
        row = _row(self.scenario, phase, mode, seq, tenant, outcome, self.origin, None)
        row.state = "not_run"
        return row

    async def concurrent(self, phase: str, mode: str, first: int, due: list[float],
                         max_in_flight: int,
                         progress: Callable[[int], None] = lambda _: None,
                         budget_s: float | None = None) -> list[JobRow]:
        """Job ``i`` submitted ``due[i]`` s after the phase starts, at most
        ``max_in_flight`` open at once. With ``budget_s``, no job is submitted after
        that many seconds and the jobs never submitted are left out of the rows
        (the open ones still finish)."""
        gate = asyncio.Semaphore(max_in_flight)
        done: dict[int, JobRow] = {}
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()
        submitted = len(due)

        async def job(seq: int) -> None:
            try:
                done[seq] = await self.one(phase, mode, seq)
                progress(len(done))
            finally:
                gate.release()

        async def submit_all() -> None:
            nonlocal submitted
            for i, offset in enumerate(due):
                delay = t0 + offset - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.acquire()
                if self.stuck or (budget_s is not None
                                  and time.perf_counter() - t0 > budget_s):
                    gate.release()
                    if budget_s is not None and not self.stuck:
                        submitted = i
                    break
                task = asyncio.create_task(job(first + i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks))

        try:
            async with asyncio.timeout(max(0.0, self._phase_deadline() - time.perf_counter())):
                await submit_all()
        except TimeoutError:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*list(tasks), return_exceptions=True)
        return [done.get(first + i) or self._not_run(phase, mode, first + i)
                for i in range(submitted)]


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def _cpu_of(run: ScenarioRun, poold: Poold, mode: str,
                  measuring: Awaitable[list[JobRow]]) -> list[JobRow]:
    """Run a measured phase, noting the CPU each process role used during it."""
    pid = poold.pid
    before = cpu_snapshot(pid) if pid is not None else None
    client = _cpu(resource.RUSAGE_SELF)
    rows = await measuring
    if before is not None and pid is not None:
        cpu = cpu_between(before, cpu_snapshot(pid))
        cpu["client"] = round(_cpu(resource.RUSAGE_SELF) - client, 4)
        run.process_cpu[mode] = cpu
    return rows


def _profile_text(path: Path, top: int = 45) -> None:
    """The heaviest functions of a cProfile file, by own time and by cumulative time."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    path.with_suffix(".profile.txt").write_text(out.getvalue(), encoding="utf-8")


def _progress(name: str, total: int) -> Callable[[int], None]:
    step = max(1, total // 10)
    is_tty = sys.stderr.isatty()

    def report(done: int) -> None:
        if done == total or (is_tty and done % step == 0):
            end = "\n" if done == total else "\r"
            print(f"  {name}: {done}/{total} jobs", end=end, file=sys.stderr, flush=True)

    return report


async def run_scenario(scenario: Scenario, logs_dir: Path, *, profile: bool = False,
                       deadline: float | None = None) -> ScenarioRun:
    """Start poold for ``scenario``, measure it, stop it. Never raises for poold trouble:
    a scenario that cannot run comes back with ``failure`` set. ``logs_dir`` (which
    must exist) receives poold's log as ``<scenario>.poold.log`` and, with ``profile``,
    its cProfile data as ``<scenario>.poold.prof`` and the top of it as
    ``<scenario>.poold.profile.txt``. ``deadline`` (perf_counter) cuts the
    measured phases short when the run's time budget runs out."""
    run = ScenarioRun(scenario)
    began = time.monotonic()
    base = Path(scenario.source).parent if scenario.source else None
    wasm = load_module(scenario.module, base=base)
    print(f"{scenario.name}: starting poold (min_idle {scenario.pool.min_idle}, "
          f"max_pods {scenario.pool.max_pods}) ...", file=sys.stderr, flush=True)
    children = _cpu(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix=f"poold-bench-{scenario.name}-") as tmp:
        poold = Poold(scenario, Path(tmp), logs_dir / f"{scenario.name}.poold.log",
                      profile_path=logs_dir / f"{scenario.name}.poold.prof" if profile else None)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        sampler: Sampler | None = None
        try:
            async with poold, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=max(scenario.max_in_flight, scenario.aged_max_in_flight) * 3 + 16),
                timeout=timeout,
            ) as session:
                run.origin = time.perf_counter()
                run.config = poold.config_text()
                apis = [(t.name, Api(session, poold.url, t.token)) for t in poold.tenants]
                sampler = Sampler(scenario.name, apis[0][1], poold.pid, run.origin)
                async with sampler:
                    await _phases(run, poold, session, apis, wasm, sampler, deadline)
        except Exception as e:  # a broken scenario must not stop the others
            run.failure = f"{type(e).__name__}: {e}"
            print(f"{scenario.name}: FAILED: {run.failure}", file=sys.stderr, flush=True)
        finally:
            run.daemon = poold.report()
            if sampler is not None:
                run.samples, run.sampler_errors = sampler.samples, sampler.errors
        run.wall_s = time.monotonic() - began
    if poold.exit_code is not None:
        run.poold_cpu_s = round(_cpu(resource.RUSAGE_CHILDREN) - children, 3)
    if poold.profile_path is not None and poold.profile_path.exists():
        _profile_text(poold.profile_path)
    if poold.leftover_slots:
        print(f"{scenario.name}: warning: slots left after poold stopped: "
              f"{poold.leftover_slots}", file=sys.stderr, flush=True)
    return run


async def _phases(run: ScenarioRun, poold: Poold, session: aiohttp.ClientSession,
                  apis: list[tuple[str, Api]], wasm: bytes, sampler: Sampler,
                  deadline: float | None = None) -> None:
    scenario = run.scenario
    token = poold.tenants[0].token

    def phase(name: str, mode: str = "") -> dict[str, Any]:
        sampler.phase = name if not mode else f"{name}:{mode}"
        entry = {"phase": name, "mode": mode,
                 "start_s": round(time.perf_counter() - run.origin, 4), "end_s": None,
                 "load1": round(os.getloadavg()[0], 2)}
        run.phases.append(entry)
        return entry

    def end(entry: dict[str, Any]) -> None:
        entry["end_s"] = round(time.perf_counter() - run.origin, 4)
        sampler.phase = "settle"

    setup = phase("setup")
    run.module_sha256 = await apis[0][1].upload(wasm)
    for _, api in apis[1:]:
        await api.upload(wasm)
    await poold.wait_pool_settled(session, token)
    end(setup)
    driver = Driver(scenario, apis, run.module_sha256, run.origin, deadline)
    seq = 0
    if scenario.warmup_jobs:
        entry = phase("warmup")
        run.rows.extend(await driver.sequential("warmup", "", 0, scenario.warmup_jobs))
        seq += scenario.warmup_jobs
        end(entry)
        await poold.wait_pool_settled(session, token)
    run.pool_before = await apis[0][1].pool()
    print(f"{scenario.name}: poold ready in {poold.start_s or 0:.1f} s, pool "
          f"{run.pool_before}; {scenario.jobs} jobs, {scenario.arrival}",
          file=sys.stderr, flush=True)
    cpu = _cpu(resource.RUSAGE_SELF)
    run.load_avg = [round(os.getloadavg()[0], 2)]
    first_mode = "fresh" if scenario.aged_jobs else ""
    entry = phase("measure", first_mode)
    label = scenario.name + (f" [{first_mode}]" if first_mode else "")
    run.rows.extend(await _cpu_of(run, poold, first_mode, driver.measure(
        first_mode, seq, _progress(label, scenario.jobs))))
    seq += scenario.jobs
    end(entry)
    if scenario.aged_jobs and not driver.stuck and not driver.out_of_budget:
        entry = phase("aging")
        budget = scenario.aged_timeout_s or scenario.timeout_s
        if deadline is not None:  # leave the aged measurement its share of the budget
            budget = min(budget, (deadline - time.perf_counter()) / 2)
        aging = await driver.concurrent(
            "aging", "", seq, [0.0] * scenario.aged_jobs, scenario.aged_max_in_flight,
            _progress(f"{scenario.name} aging", scenario.aged_jobs),
            budget_s=max(1.0, budget))
        run.rows.extend(aging)
        seq += scenario.aged_jobs
        end(entry)
        entry["jobs"] = len(aging)
        entry["succeeded"] = sum(1 for r in aging if r.state == SUCCEEDED)
        print(f"{scenario.name}: aged by {entry['succeeded']} jobs "
              f"({len(aging)} submitted) in {entry['end_s'] - entry['start_s']:.1f} s",
              file=sys.stderr, flush=True)
        await poold.wait_pool_settled(session, token)
        entry = phase("measure", "aged")
        run.rows.extend(await _cpu_of(run, poold, "aged", driver.measure(
            "aged", seq, _progress(f"{scenario.name} [aged]", scenario.jobs))))
        end(entry)
    run.client_cpu_s = round(_cpu(resource.RUSAGE_SELF) - cpu, 3)
    run.load_avg.append(round(os.getloadavg()[0], 2))
    if scenario.tail_s and not driver.stuck:
        entry = phase("tail")
        tail = scenario.tail_s
        if deadline is not None:
            tail = min(tail, max(0.0, deadline - time.perf_counter()))
        # no job runs: the sampler watches the pool shrink for a fixed span of time
        await asyncio.sleep(tail)
        end(entry)
