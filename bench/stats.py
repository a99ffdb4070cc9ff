"""Per-scenario figures and the verdicts against poold's targets.

Percentiles are nearest-rank (the smallest value with at least p % of the
samples at or below it): no interpolation, so a p99 is always a latency some
job really had. Throughput is succeeded jobs divided by the client's wall
time from the first submission to the last terminal record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .runner import SUCCEEDED, ScenarioRun

P50_TARGET_MS = 5.0
P99_TARGET_MS = 25.0
RATIO_TARGET = 20.0
THROUGHPUT_TARGET = 100.0


def percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Summary:
    scenario: str
    role: str | None
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
    run_p50: float | None
    e2e_p50: float | None
    e2e_p99: float | None
    wall_s: float | None
    """Client clock, first submission to last terminal record."""
    throughput: float | None
    """Succeeded jobs per second over ``wall_s``."""
    states: dict[str, int]
    failure: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(run: ScenarioRun) -> Summary:
    rows = run.measured
    waits = [r.wait_ms for r in rows if r.wait_ms is not None]
    e2e = [r.e2e_ms for r in rows if r.e2e_ms is not None]
    assign = [r.assign_ms for r in rows if r.assign_ms is not None]
    runs = [r.run_ms for r in rows if r.run_ms is not None]
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
    return Summary(
        scenario=run.scenario.name,
        role=run.scenario.role,
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
        run_p50=percentile(runs, 50),
        e2e_p50=percentile(e2e, 50),
        e2e_p99=percentile(e2e, 99),
        wall_s=wall,
        throughput=throughput,
        states=states,
        failure=run.failure,
    )


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
    thr = _first(summaries, "throughput")
    value, w, c = ratio(summaries)
    no_warm = "no \"warm\" scenario run"

    def at_most(measured: float | None, goal: float) -> bool | None:
        return None if measured is None else measured <= goal

    def at_least(measured: float | None, goal: float) -> bool | None:
        return None if measured is None else measured >= goal

    p50 = warm.wait_p50 if warm else None
    p99 = warm.wait_p99 if warm else None
    tps = thr.throughput if thr else None
    return [
        Verdict("warm submit-to-start p50", warm.scenario if warm else no_warm, p50,
                f"<= {P50_TARGET_MS:g}", "ms", at_most(p50, P50_TARGET_MS)),
        Verdict("warm submit-to-start p99", warm.scenario if warm else no_warm, p99,
                f"<= {P99_TARGET_MS:g}", "ms", at_most(p99, P99_TARGET_MS)),
        Verdict("cold/warm p50 ratio",
                f"{c.scenario}/{w.scenario}" if c and w else "no \"cold\" + \"warm\" pair run",
                value, f">= {RATIO_TARGET:g}", "x", at_least(value, RATIO_TARGET)),
        Verdict("throughput", thr.scenario if thr else "no \"throughput\" scenario run",
                tps, f">= {THROUGHPUT_TARGET:g}", "jobs/s", at_least(tps, THROUGHPUT_TARGET)),
    ]
