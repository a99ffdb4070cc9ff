"""Automatic against fixed pool sizing (issue 14): what each configuration cost and
how the automatic target moved, the comparison table, and the issue's targets.

From the sampler's rows of one scenario (``GET /v1/pool`` at 10 Hz, the
``/metrics`` counters at 2 Hz), on the scenario's clock:

- **idle worker-seconds**: the idle count integrated over the measured phase,
  what a warm pool costs in memory (or pods) while it waits;
- **target rise**: from the first arrival to the first sample whose idle target
  is at 90 % of the highest it reached in the phase (how fast it follows a step);
- **target fall**: from the end of the load to the target back at rest (the
  floor with ``"auto"``, ``min_idle`` otherwise);
- **shrink**: from the end of the load to the idle count back at rest for good
  (within the ``tail`` phase);
- **churn**: surplus retirements during the measured phase that were followed by
  a worker creation within 10 s, per minute (with one worker per job a creation
  follows every job, so at a steady rate this is every surplus retirement).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .runner import ScenarioRun
from .sampler import PoolSample
from .stats import Summary, Verdict

P90_FACTOR = 1.5
"""Auto's p90 wait may be at most this multiple of the best fixed setting's."""
SHRINK_SLACK_S = 10.0
"""After the load stops, the idle pool is back at its floor within idle_ttl_s + this."""
CHURN_PER_MIN = 5.0
"""At a steady rate, fewer surplus retirements per minute than this that a creation
follows within :data:`CHURN_WINDOW_S`."""
CHURN_WINDOW_S = 10.0
AUTO_IDLE_TTL_S = 30.0
"""poold's ``idle_ttl_s`` with ``"auto"`` when the setting is 0 (poold.sched.sizing)."""
STEADY = ("even", "poisson")
STEADY_MIN_S = 10.0
"""A steady rate (the churn target applies): even or Poisson arrivals whose measured
phase lasted at least this long (not a 2-second burst)."""


@dataclass
class SizingFigures:
    scenario: str
    group: str | None
    min_idle: int | str
    arrival: str
    measured_s: float
    """How long the measured phase lasted."""
    rest: int
    """Idle workers at rest: ``min_idle``, or with ``"auto"`` the floor."""
    ttl_s: float
    """The idle TTL surplus workers wait (poold's default for ``"auto"`` if unset)."""
    workers_peak: int | None = None
    idle_worker_s: float | None = None
    target_peak: int | None = None
    target_rise_s: float | None = None
    target_fall_s: float | None = None
    shrink_s: float | None = None
    tail_s: float = 0.0
    surplus_per_min: float | None = None
    churn_per_min: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pool_rows(samples: Sequence[PoolSample], start: float, end: float) -> list[PoolSample]:
    return [s for s in samples if s.idle is not None and start <= s.t_s <= end]


def figures(run: ScenarioRun) -> SizingFigures | None:
    """This scenario's sizing figures (None if it has no measured phase)."""
    sc = run.scenario
    window = run.window("")
    if window is None:
        return None
    start, end = window
    auto = sc.pool.min_idle == "auto"
    rest = (sc.pool.min_idle_floor if sc.pool.min_idle_floor is not None else 1) if auto \
        else int(sc.pool.min_idle)
    ttl = sc.pool.idle_ttl_s or (AUTO_IDLE_TTL_S if auto else 0.0)
    out = SizingFigures(scenario=sc.name, group=sc.group, min_idle=sc.pool.min_idle,
                        arrival=sc.arrival, measured_s=round(end - start, 2), rest=rest,
                        ttl_s=ttl, tail_s=sc.tail_s)
    rows = _pool_rows(run.samples, start, end)
    if rows:
        out.workers_peak = max((r.idle or 0) + (r.busy or 0) + (r.starting or 0) for r in rows)
        out.idle_worker_s = round(sum(
            (a.idle or 0) * (b.t_s - a.t_s) for a, b in itertools.pairwise(rows)), 1)
        targets = [r for r in rows if r.idle_target is not None]
        if targets:
            peak = max(r.idle_target or 0 for r in targets)
            out.target_peak = peak
            rise = next(r for r in targets if (r.idle_target or 0) >= 0.9 * peak)
            out.target_rise_s = round(rise.t_s - start, 2)
    after = [s for s in run.samples if s.idle is not None and s.t_s > end]
    fall = next((s for s in after if s.idle_target is not None and s.idle_target <= rest), None)
    if fall is not None:
        out.target_fall_s = round(fall.t_s - end, 2)
    if after:
        above = [i for i, s in enumerate(after) if (s.idle or 0) > rest]
        settled = 0 if not above else above[-1] + 1
        if settled < len(after):
            out.shrink_s = round(after[settled].t_s - end, 2)
    out.surplus_per_min, out.churn_per_min = _churn(run.samples, start, end)
    return out


def _churn(samples: Sequence[PoolSample], start: float, end: float
           ) -> tuple[float | None, float | None]:
    counts = [s for s in samples if s.surplus_retired is not None and s.creations is not None]
    inside = [s for s in counts if start <= s.t_s <= end]
    if len(inside) < 2 or end <= start:
        return None, None
    retired = followed = 0.0
    for a, b in itertools.pairwise(inside):
        delta = (b.surplus_retired or 0) - (a.surplus_retired or 0)
        if delta <= 0:
            continue
        retired += delta
        later = [s for s in counts if b.t_s < s.t_s <= b.t_s + CHURN_WINDOW_S]
        if later and (later[-1].creations or 0) > (b.creations or 0):
            followed += delta
    minutes = (end - start) / 60
    return round(retired / minutes, 1), round(followed / minutes, 1)


def _f(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


W = 34


def table(figs: Sequence[SizingFigures], summaries: Sequence[Summary]) -> list[str]:
    """Auto next to the fixed settings of the same arrivals, group by group."""
    groups = [g for g in dict.fromkeys(f.group for f in figs)
              if g is not None and any(f.group == g and f.min_idle == "auto" for f in figs)]
    if not groups:
        return []
    by_name = {s.scenario: s for s in summaries if s.mode == ""}
    cols = (f"{'scenario':<{W}} {'warm':>5} {'p50':>7} {'p90':>7} {'p99':>7} {'workers':>7} "
            f"{'peak':>5} {'idle':>7} {'PSS':>6} {'target':>6} {'rise':>5} {'fall':>5} "
            f"{'shrink':>6} {'surplus':>7} {'churn':>6}")
    lines = ["automatic against fixed pool sizing, same arrivals (wait = submit-to-start; "
             "idle = idle worker-seconds over the measured phase; target = the idle "
             "target's peak, rise = s from the first arrival to 90 % of it, fall = s from "
             "the end of the load back to rest; shrink = s until the idle pool is back at "
             "rest; surplus and churn = surplus retirements per minute, and those a "
             "creation followed within 10 s)", cols,
             f"{'':<{W}} {'%':>5} {'ms':>7} {'ms':>7} {'ms':>7} {'mean':>7} {'':>5} "
             f"{'w·s':>7} {'MiB':>6} {'':>6} {'s':>5} {'s':>5} {'s':>6} {'/min':>7} "
             f"{'/min':>6}",
             "-" * len(cols)]
    for g in groups:
        for f in (f for f in figs if f.group == g):
            s = by_name.get(f.scenario)
            if s is None or not s.jobs:
                continue
            shrink = _f(f.shrink_s) if f.shrink_s is not None or not f.tail_s \
                else f">{f.tail_s:g}"
            lines.append(
                f"{s.label:<{W}} {100 * s.warm / s.jobs:>5.0f} {_f(s.wait_p50):>7} "
                f"{_f(s.wait_p90):>7} {_f(s.wait_p99):>7} {_f(s.workers_mean):>7} "
                f"{_f(f.workers_peak, 'g'):>5} {_f(f.idle_worker_s):>7} "
                f"{_f(s.pss_mean_mib, '.0f'):>6} {_f(f.target_peak, 'g'):>6} "
                f"{_f(f.target_rise_s):>5} {_f(f.target_fall_s):>5} {shrink:>6} "
                f"{_f(f.surplus_per_min):>7} {_f(f.churn_per_min):>6}")
    return lines


def verdicts(figs: Sequence[SizingFigures], summaries: Sequence[Summary]) -> list[Verdict]:
    """Issue 14's targets, for every sweep that has an automatic entry."""
    by_name = {s.scenario: s for s in summaries if s.mode == "" and s.failure is None}
    out: list[Verdict] = []
    for f in figs:
        auto = by_name.get(f.scenario)
        if f.min_idle != "auto" or auto is None or not auto.jobs:
            continue
        fixed = [by_name[g.scenario] for g in figs
                 if g.group == f.group and g.group is not None and g.min_idle != "auto"
                 and g.scenario in by_name and by_name[g.scenario].wait_p90 is not None]
        if fixed and auto.wait_p90 is not None:
            best = min(fixed, key=lambda s: (s.wait_p90 or 0, s.workers_mean or 0))
            ratio = auto.wait_p90 / best.wait_p90 if best.wait_p90 else None
            out.append(Verdict("auto p90 / best fixed p90", f"{auto.label} / {best.label}",
                               ratio, f"<= {P90_FACTOR:g}", "x",
                               None if ratio is None else ratio <= P90_FACTOR))
            out.append(Verdict("auto mean workers", f"{auto.label} / {best.label}",
                               auto.workers_mean, f"<= {_f(best.workers_mean)}", "workers",
                               None if auto.workers_mean is None or best.workers_mean is None
                               else auto.workers_mean <= best.workers_mean))
        if f.tail_s:
            goal = f.ttl_s + SHRINK_SLACK_S
            out.append(Verdict("idle at floor after load", auto.label, f.shrink_s,
                               f"<= {goal:g}", "s",
                               False if f.shrink_s is None else f.shrink_s <= goal))
        if f.arrival in STEADY and f.measured_s >= STEADY_MIN_S:
            out.append(Verdict("churn at a steady rate", auto.label, f.churn_per_min,
                               f"< {CHURN_PER_MIN:g}", "/min",
                               None if f.churn_per_min is None
                               else f.churn_per_min < CHURN_PER_MIN))
    return out


def modelled_target(*, rate: float, start_s: float, poisson: bool = True, seconds: float = 120.0,
                    seed: int = 1) -> tuple[float, int]:
    """The idle target poold's own sizing code (:class:`poold.sched.sizing.Sizer`)
    keeps for a steady arrival stream whose worker starts all take ``start_s``,
    on a simulated clock (so no machine load enters it): its mean and its peak,
    sampled every 50 ms after the first 12 s (both windows full)."""
    from poold.sched.sizing import Sizer  # noqa: PLC0415 - only this model needs poold

    rng = random.Random(seed)  # noqa: S311 - arrival times, not secrets
    now = 0.0
    sizer = Sizer(clock=lambda: now)
    for _ in range(50):
        sizer.meter.started(start_s)
    due, targets, t = 0.0, [], 0.0
    while t < seconds:
        while due <= t:
            now = due
            sizer.meter.arrived()
            due += rng.expovariate(rate) if poisson else 1 / rate
        now = t
        target = sizer.idle_target(min_idle="auto", floor=1, max_pods=16)
        if t >= 12.0:
            targets.append(target)
        t += 0.05
    return round(sum(targets) / len(targets), 1), max(targets)


def main() -> None:
    """``python -m bench.sizing``: the modelled idle target for a few steady rates."""
    from poold.logs import configure  # noqa: PLC0415

    configure(level="warning")  # each change of the target is an info line
    print("rate      arrivals  start p90  idle target mean / peak")
    for rate, poisson in ((6.0, True), (10.0, False), (10.0, True)):
        for start in (0.2, 0.3, 0.8):
            mean, peak = modelled_target(rate=rate, start_s=start, poisson=poisson)
            print(f"{rate:>4g}/s    {'Poisson' if poisson else 'even':<8}  {start:>7g} s  "
                  f"{mean:>6g} / {peak}")


if __name__ == "__main__":
    main()
