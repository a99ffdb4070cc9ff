"""Per-scenario figures and the verdicts against poold's targets.

Percentiles are nearest-rank (the smallest value with at least p % of the
samples at or below it): no interpolation, so a p99 is always a latency some
job really had. Throughput is succeeded jobs divided by the client's wall
time from the first submission to the last terminal record.

A scenario with two modes (``fresh``/``aged``, ``cold``/``hot``) gets one
summary per mode, labelled ``<scenario> [<mode>]``. Pool and memory figures
come from the sampler's readings inside the measured phase of that mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .runner import SUCCEEDED, JobRow, ScenarioRun

P50_TARGET_MS = 2.0
P99_TARGET_MS = 10.0
RATIO_TARGET = 20.0
OUTPUT_P50_TARGET_MS = 20.0
OUTPUT_P99_TARGET_MS = 60.0
THROUGHPUT_TARGET = 60.0
"""jobs/s of trivial jobs with ``pool.reuse = "never"`` (one worker per job)."""
THROUGHPUT_REUSE_TARGET = 200.0
CPU_REUSE_TARGET_MS = 12.0
"""CPU ms per job, all processes, with reuse."""
STALL_TARGET_MS = 500.0
"""The throughput scenarios' longest submit-to-start wait."""
ARRIVAL_P99_TARGET_MS = 100.0


def percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


@dataclass
class Summary:
    scenario: str
    label: str
    """``scenario``, or ``scenario [mode]`` when the scenario has several modes."""
    mode: str
    role: str | None
    group: str | None
    """The sweep this scenario came from (the pool-sizing table), if any."""
    min_idle: int | str
    max_pods: int
    jobs: int
    errors: int
    bad_output: int
    follow_breaks: int
    """Jobs whose ``output?follow=true`` response poold cut off (see README)."""
    warm: int
    wait_p50: float | None
    wait_p90: float | None
    wait_p99: float | None
    wait_max: float | None
    assign_p50: float | None
    """submitted → assigned (queue, fair share, claiming a worker)."""
    assign_p99: float | None
    start_p50: float | None
    """assigned → started (input to Kafka, delivery to the worker, the agent's start)."""
    start_p99: float | None
    run_p50: float | None
    run_p99: float | None
    e2e_p50: float | None
    e2e_p90: float | None
    e2e_p99: float | None
    e2e_max: float | None
    upload_p50: float | None
    """PUT /v1/modules of fresh variants (``new_module_every``)."""
    wall_s: float | None
    """Client clock, first submission to last terminal record."""
    throughput: float | None
    """Succeeded jobs per second over ``wall_s``."""
    states: dict[str, int]
    failure: str | None
    workers_mean: float | None = None
    """Mean idle + busy + starting workers (GET /v1/pool) during the measured phase."""
    idle_mean: float | None = None
    rss_mean_mib: float | None = None
    """Sum of RSS over poold's process tree (poold, broker, fork server, workers)."""
    rss_peak_mib: float | None = None
    pss_mean_mib: float | None = None
    """The same tree's PSS: shared pages split between their sharers (what it occupies)."""
    pss_peak_mib: float | None = None
    workers_pss_mean_mib: float | None = None
    daemon_cpu_s: float | None = None
    """CPU seconds the poold process itself (not workers, broker) used in the phase."""
    budget_cut: bool = False
    """The run's time budget (``--budget-s``) stopped this measurement early."""
    load_avg: list[float] | None = None
    """The machine's 1-minute load average when this mode's measured phase began."""
    aged_by: int | None = None
    """Mode ``aged``: the jobs that succeeded on this daemon between the two measurements."""
    cpu_p50: float | None = None
    """Per job, from the records' ``usage``: CPU ms of the module's run."""
    cpu_p90: float | None = None
    memory_p50: float | None = None
    """Linear memory at its peak, bytes."""
    rss_p50: float | None = None
    """The worker's peak resident memory, bytes."""
    rss_max: float | None = None
    cpu_ms_per_job: dict[str, float] | None = None
    """CPU ms per succeeded job by process role (poold, broker, forkserver, worker,
    other, client) over the measured phase, from /proc; ``total`` is their sum."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(run: ScenarioRun) -> list[Summary]:
    """One summary per mode of the scenario (a mode with no rows, e.g. ``aged`` when
    the scenario stopped before it, is left out)."""
    modes = run.scenario.modes()
    return [_summarize(run, [r for r in run.measured if r.mode == m], m) for m in modes
            if m == modes[0] or any(r.mode == m for r in run.measured)]


def _pool_figures(run: ScenarioRun, mode: str) -> dict[str, float | None]:
    # cold and hot jobs alternate within one measured phase (its mode is "")
    window = run.window("" if mode in ("cold", "hot") else mode)
    samples = [s for s in run.samples
               if window is not None and window[0] <= s.t_s <= window[1]]
    pool = [s for s in samples if s.idle is not None]
    mem = [s for s in samples if s.rss_mib is not None]
    if not mem and window is not None:
        # a phase shorter than the memory interval: the readings just before and after
        every = [s for s in run.samples if s.rss_mib is not None]
        before = [s for s in every if s.t_s < window[0]][-1:]
        after = [s for s in every if s.t_s > window[1]][:1]
        mem = before + after
    pss = [s.pss_mib for s in mem if s.pss_mib is not None]
    cpu = [s.daemon_cpu_s for s in mem if s.daemon_cpu_s is not None]
    return {
        "workers_mean": _mean([float((s.idle or 0) + (s.busy or 0) + (s.starting or 0))
                               for s in pool]),
        "idle_mean": _mean([float(s.idle or 0) for s in pool]),
        "rss_mean_mib": _mean([s.rss_mib for s in mem if s.rss_mib is not None]),
        "rss_peak_mib": max((s.rss_mib for s in mem if s.rss_mib is not None), default=None),
        "pss_mean_mib": _mean(pss),
        "pss_peak_mib": max(pss, default=None),
        "workers_pss_mean_mib": _mean([s.workers_pss_mib for s in mem
                                       if s.workers_pss_mib is not None]),
        "daemon_cpu_s": round(cpu[-1] - cpu[0], 3) if len(cpu) >= 2 else None,
    }


def _phase_load(run: ScenarioRun, mode: str) -> list[float]:
    """The 1-minute load average when the measured phase of ``mode`` began."""
    key = "" if mode in ("cold", "hot") else mode
    for p in run.phases:
        if p["phase"] == "measure" and p["mode"] == key and "load1" in p:
            return [float(p["load1"])]
    return []


def _summarize(run: ScenarioRun, rows: list[JobRow], mode: str) -> Summary:
    waits = [r.wait_ms for r in rows if r.wait_ms is not None]
    e2e = [r.e2e_ms for r in rows if r.e2e_ms is not None]
    assign = [r.assign_ms for r in rows if r.assign_ms is not None]
    start = [r.start_ms for r in rows if r.start_ms is not None]
    runs = [r.run_ms for r in rows if r.run_ms is not None]
    uploads = [r.upload_ms for r in rows if r.upload_ms is not None]
    cpu = [r.usage_cpu_ms for r in rows if r.usage_cpu_ms is not None]
    memory = [float(r.usage_memory_peak_bytes) for r in rows
              if r.usage_memory_peak_bytes is not None]
    rss = [float(r.usage_rss_peak_bytes) for r in rows if r.usage_rss_peak_bytes is not None]
    succeeded = [r for r in rows if r.state == SUCCEEDED]
    states: dict[str, int] = {}
    for r in rows:
        states[r.state] = states.get(r.state, 0) + 1
    wall: float | None = None
    throughput: float | None = None
    ends = [r.done_s for r in rows if r.done_s is not None]
    if rows and ends:
        wall = max(ends) - min(r.sent_s for r in rows)
        throughput = len(succeeded) / wall if wall > 0 else None
    sc = run.scenario
    return Summary(
        scenario=sc.name,
        label=sc.name + (f" [{mode}]" if mode else ""),
        mode=mode,
        role=sc.role if mode in ("", "fresh") else None,
        group=sc.group,
        min_idle=sc.pool.min_idle,
        max_pods=sc.pool.max_pods,
        jobs=len(rows),
        errors=len(rows) - len(succeeded),
        bad_output=sum(1 for r in rows if r.output_ok is False),
        follow_breaks=sum(1 for r in rows if r.follow_breaks),
        warm=sum(1 for r in rows if r.warm),
        wait_p50=percentile(waits, 50),
        wait_p90=percentile(waits, 90),
        wait_p99=percentile(waits, 99),
        wait_max=max(waits) if waits else None,
        assign_p50=percentile(assign, 50),
        assign_p99=percentile(assign, 99),
        start_p50=percentile(start, 50),
        start_p99=percentile(start, 99),
        run_p50=percentile(runs, 50),
        run_p99=percentile(runs, 99),
        e2e_p50=percentile(e2e, 50),
        e2e_p90=percentile(e2e, 90),
        e2e_p99=percentile(e2e, 99),
        e2e_max=max(e2e) if e2e else None,
        upload_p50=percentile(uploads, 50),
        wall_s=wall,
        throughput=throughput,
        states=states,
        failure=run.failure,
        load_avg=_phase_load(run, mode) or run.load_avg or None,
        cpu_p50=percentile(cpu, 50), cpu_p90=percentile(cpu, 90),
        memory_p50=percentile(memory, 50), rss_p50=percentile(rss, 50),
        rss_max=max(rss) if rss else None,
        budget_cut=any(r.state == "not_run" and "time budget" in (r.error or "") for r in rows),
        aged_by=(sum(1 for r in run.rows if r.phase == "aging" and r.state == SUCCEEDED)
                 if mode == "aged" else None),
        cpu_ms_per_job=_cpu_per_job(run, mode, states.get(SUCCEEDED, 0)),
        **_pool_figures(run, mode),
    )


def _cpu_per_job(run: ScenarioRun, mode: str, succeeded: int) -> dict[str, float] | None:
    # cold and hot jobs alternate within one measured phase (its mode is "")
    cpu = run.process_cpu.get("" if mode in ("cold", "hot") else mode)
    if not cpu or not succeeded or mode in ("cold", "hot"):
        return None
    out = {role: round(s * 1000 / succeeded, 2) for role, s in cpu.items()}
    out["total"] = round(sum(cpu.values()) * 1000 / succeeded, 2)
    return out


@dataclass
class Verdict:
    target: str
    source: str
    """The scenario(s) the figure comes from, or why there is none."""
    measured: float | None
    goal: str
    unit: str
    met: bool | None
    """None when the run had no scenario for it (not a MISS, just not measured)."""

    @property
    def result(self) -> str:
        return "n/a" if self.met is None else ("PASS" if self.met else "MISS")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "result": self.result}


def _first(summaries: Sequence[Summary], role: str) -> Summary | None:
    return next((s for s in summaries if s.role == role and s.failure is None), None)


def ratio(summaries: Sequence[Summary]) -> tuple[float | None, Summary | None, Summary | None]:
    """cold p50 / warm p50 of submit-to-start, with the two scenarios it compares."""
    warm, cold = _first(summaries, "warm"), _first(summaries, "cold")
    if warm is None or cold is None or not warm.wait_p50 or cold.wait_p50 is None:
        return None, warm, cold
    return cold.wait_p50 / warm.wait_p50, warm, cold


def verdicts(summaries: Sequence[Summary]) -> list[Verdict]:
    warm = _first(summaries, "warm")
    hot = _first(summaries, "hot")
    thr = _first(summaries, "throughput")
    reuse = _first(summaries, "throughput_reuse")
    output = _first(summaries, "output")
    value, w, c = ratio(summaries)
    no_warm = "no \"warm\" scenario run"

    def at_most(measured: float | None, goal: float) -> bool | None:
        return None if measured is None else measured <= goal

    def at_least(measured: float | None, goal: float) -> bool | None:
        return None if measured is None else measured >= goal

    def of(s: Summary | None, role: str) -> str:
        return s.label if s else f"no \"{role}\" scenario run"

    p50 = warm.wait_p50 if warm else None
    p99 = warm.wait_p99 if warm else None
    tps = thr.throughput if thr else None
    reuse_tps = reuse.throughput if reuse else None
    reuse_cpu = (reuse.cpu_ms_per_job or {}).get("total") if reuse else None
    out = [
        Verdict("warm submit-to-start p50", warm.label if warm else no_warm, p50,
                f"<= {P50_TARGET_MS:g}", "ms", at_most(p50, P50_TARGET_MS)),
        Verdict("warm submit-to-start p99", warm.label if warm else no_warm, p99,
                f"<= {P99_TARGET_MS:g}", "ms", at_most(p99, P99_TARGET_MS)),
        Verdict("hot submit-to-start p50", of(hot, "hot"), hot.wait_p50 if hot else None,
                f"<= {P50_TARGET_MS:g}", "ms",
                at_most(hot.wait_p50 if hot else None, P50_TARGET_MS)),
        Verdict("hot submit-to-start p99", of(hot, "hot"), hot.wait_p99 if hot else None,
                f"<= {P99_TARGET_MS:g}", "ms",
                at_most(hot.wait_p99 if hot else None, P99_TARGET_MS)),
        Verdict("cold/warm p50 ratio",
                f"{c.label}/{w.label}" if c and w else "no \"cold\" + \"warm\" pair run",
                value, f">= {RATIO_TARGET:g}", "x", at_least(value, RATIO_TARGET)),
        Verdict("10-record output p50", of(output, "output"),
                output.e2e_p50 if output else None, f"<= {OUTPUT_P50_TARGET_MS:g}", "ms",
                at_most(output.e2e_p50 if output else None, OUTPUT_P50_TARGET_MS)),
        Verdict("10-record output p99", of(output, "output"),
                output.e2e_p99 if output else None, f"<= {OUTPUT_P99_TARGET_MS:g}", "ms",
                at_most(output.e2e_p99 if output else None, OUTPUT_P99_TARGET_MS)),
        Verdict("throughput, reuse never", of(thr, "throughput"),
                tps, f">= {THROUGHPUT_TARGET:g}", "jobs/s", at_least(tps, THROUGHPUT_TARGET)),
        Verdict("throughput, reuse tenant", of(reuse, "throughput_reuse"), reuse_tps,
                f">= {THROUGHPUT_REUSE_TARGET:g}", "jobs/s",
                at_least(reuse_tps, THROUGHPUT_REUSE_TARGET)),
        Verdict("CPU per job, reuse", of(reuse, "throughput_reuse"), reuse_cpu,
                f"<= {CPU_REUSE_TARGET_MS:g}", "ms", at_most(reuse_cpu, CPU_REUSE_TARGET_MS)),
    ]
    out.extend(Verdict("no stall: max wait", s.label, s.wait_max, f"<= {STALL_TARGET_MS:g}",
                       "ms", at_most(s.wait_max, STALL_TARGET_MS))
               for s in (thr, reuse) if s is not None)
    out.extend(Verdict("arrival wait p99", s.label, s.wait_p99,
                       f"<= {ARRIVAL_P99_TARGET_MS:g}", "ms",
                       at_most(s.wait_p99, ARRIVAL_P99_TARGET_MS))
               for s in summaries if s.role == "arrival" and s.failure is None)
    return out
