"""The automatic idle target (``pool.min_idle = "auto"``) as a pure function."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from poold.sched.sizing import (
    DEFAULT_START_S,
    LONG_WINDOW_S,
    SHORT_WINDOW_S,
    Bound,
    DemandMeter,
    Sizer,
    SizingInputs,
    decide,
    jitter,
    retirable,
)


def target(*, short: float = 0.0, long: float = 0.0, start: float = 1.0, floor: int = 1,
           max_pods: int = 64, previous: int = 1, margin: float = 2.0,
           hysteresis: float = 0.25) -> int:
    return decide(SizingInputs(short_rate=short, long_rate=long, start_p90_s=start,
                               floor=floor, max_pods=max_pods, previous=previous,
                               margin=margin, hysteresis=hysteresis)).target


def test_no_arrivals_keeps_the_floor() -> None:
    assert target(floor=1) == 1
    assert target(floor=3) == 3
    assert target(floor=0) == 0


def test_littles_law_with_the_margin() -> None:
    # 10 jobs/s, workers take 0.4 s: 4 arrive during a start, + 2·√4 = 8
    assert target(short=10, long=10, start=0.4) == 8
    # without a margin exactly the expected arrivals
    assert target(short=10, long=10, start=0.4, margin=0) == 4


def test_a_slower_start_needs_more_idle_workers() -> None:
    assert target(short=10, start=0.2) < target(short=10, start=0.4) < target(short=10, start=2)


def test_the_larger_window_rate_counts() -> None:
    burst = target(short=50, long=5, start=0.4)
    lull = target(short=0, long=50, start=0.4, previous=1)
    assert burst == lull == target(short=50, long=50, start=0.4)
    assert burst > target(short=5, long=5, start=0.4)


def test_bounded_by_max_pods_and_says_so() -> None:
    decision = decide(SizingInputs(short_rate=1000, long_rate=0, start_p90_s=1, floor=1,
                                   max_pods=16, previous=1))
    assert decision.target == 16
    assert decision.bound is Bound.MAX_PODS
    assert "16" in decision.reason() and "max_pods" in decision.reason()


def test_floor_above_the_need_wins() -> None:
    decision = decide(SizingInputs(short_rate=1, long_rate=1, start_p90_s=0.1, floor=5,
                                   max_pods=16, previous=5))
    assert decision.target == 5
    assert decision.bound is Bound.FLOOR


def test_rises_at_once() -> None:
    assert target(short=10, start=0.4, previous=1) == 8


def test_falls_only_past_the_hysteresis_band() -> None:
    # at previous 8, a need of 3.2 (→ 6.78 → 7; with the band 4.0 → 8) keeps 8 ...
    kept = decide(SizingInputs(short_rate=8.0, long_rate=0, start_p90_s=0.4, floor=1,
                               max_pods=64, previous=8))
    assert kept.target == 8
    assert kept.bound is Bound.HYSTERESIS
    # ... without the band it would have dropped to 7
    assert target(short=8.0, start=0.4, previous=8, hysteresis=0) == 7
    # a clear drop goes down, but only to what the banded need still asks for
    assert target(short=2.5, start=0.4, previous=8) == 4  # need 1 → 1.25 + 2·1.118 → 4
    assert target(short=0, start=0.4, previous=8) == 1


def test_a_steady_rate_on_a_boundary_does_not_oscillate() -> None:
    previous = 1
    seen = []
    for rate in [10.0, 9.6, 10.3, 9.4, 10.1, 9.7, 10.4, 9.5] * 5:  # ±5 % noise
        previous = target(short=rate, long=9.0, start=0.4, previous=previous)
        seen.append(previous)
    # it rises to the peak of the noise once, then holds
    assert len(set(seen[8:])) == 1, seen
    # without hysteresis the same rates move it up and down
    previous, changes = seen[-1], 0
    for rate in [10.0, 9.6, 10.3, 9.4, 10.1, 9.7, 10.4, 9.5] * 5:
        now = target(short=rate, long=9.0, start=0.4, previous=previous, hysteresis=0)
        changes += now != previous
        previous = now
    assert changes > 5


@pytest.mark.parametrize("previous", [0, 1, 4, 16, 40])
def test_always_within_bounds(previous: int) -> None:
    for rate in (0.0, 0.5, 3.0, 30.0, 3000.0):
        for start in (0.0, 0.05, 1.0, 30.0):
            t = target(short=rate, long=rate / 2, start=start, floor=2, max_pods=16,
                       previous=previous)
            assert 2 <= t <= 16


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_meter_rates_follow_the_windows() -> None:
    clock = Clock()
    meter = DemandMeter(clock=clock)
    assert meter.rates() == (0.0, 0.0)
    for _ in range(20):  # 20 arrivals over one second
        meter.arrived()
        clock.now += 0.05
    short, long = meter.rates()
    assert short == pytest.approx(20 / SHORT_WINDOW_S)
    assert long == pytest.approx(20 / LONG_WINDOW_S)
    clock.now += SHORT_WINDOW_S  # the burst left the short window, not the long one
    short, long = meter.rates()
    assert short == 0 and long == pytest.approx(20 / LONG_WINDOW_S)
    clock.now += LONG_WINDOW_S
    assert meter.rates() == (0.0, 0.0)


def test_meter_start_p90() -> None:
    meter = DemandMeter(clock=Clock())
    assert meter.start_p90() == DEFAULT_START_S
    for i in range(1, 11):
        meter.started(i / 10)
    assert meter.start_p90() == pytest.approx(0.9)
    for _ in range(100):  # only recent starts count
        meter.started(0.2)
    assert meter.start_p90() == pytest.approx(0.2)


def test_retires_the_longest_idle_surplus_after_the_ttl() -> None:
    idle = [("a", 100.0), ("b", 90.0), ("c", 95.0), ("d", 120.0)]
    # two surplus, the two idle longest (b, c), once idle 10 s (+ up to 10 %)
    due, next_at = retirable(idle, surplus=2, ttl_s=10, now=111.0)
    assert due == ["b", "c"] and next_at is None
    due, next_at = retirable(idle, surplus=2, ttl_s=10, now=99.0)
    assert due == [] and next_at == pytest.approx(90 + 10 * (1 + jitter("b")))
    # no surplus, or no TTL: nobody
    assert retirable(idle, surplus=0, ttl_s=10, now=1000.0) == ([], None)
    assert retirable(idle, surplus=4, ttl_s=0, now=1000.0) == ([], None)


def test_jitter_spreads_workers_idle_since_the_same_moment() -> None:
    pods = [f"poold-w-{i:010x}" for i in range(20)]
    fractions = {jitter(p) for p in pods}
    assert len(fractions) > 10
    assert all(0 <= f < 0.1 for f in fractions)
    assert jitter(pods[0]) == jitter(pods[0])


def test_a_flickering_target_logs_one_info_line_per_period_with_the_count() -> None:
    """At a steady Poisson rate the target moves by one about every second; the log
    got a line each time. Now one info line per Sizer.LOG_EVERY_S, counting the
    changes it stands for, and the rest at debug."""
    clock = Clock()
    sizer = Sizer(clock=clock)
    sizer.LOG_EVERY_S = 1000.0

    def flicker() -> None:
        sizer.meter.arrived(50)  # a burst: the target rises at once
        assert sizer.idle_target(min_idle="auto", floor=1, max_pods=16) > 1
        clock.now += LONG_WINDOW_S + 1  # the burst has left both windows
        assert sizer.idle_target(min_idle="auto", floor=1, max_pods=16) == 1

    with capture_logs() as logs:
        for _ in range(5):
            flicker()
    changes = [e for e in logs if e["event"] == "idle target changed"]
    assert len(changes) == 10
    assert [e["log_level"] for e in changes] == ["info"] + ["debug"] * 9
    with capture_logs() as logs:
        clock.now += sizer.LOG_EVERY_S
        flicker()
    info = [e for e in logs if e["event"] == "idle target changed" and e["log_level"] == "info"]
    assert len(info) == 1
    assert info[0]["changes"] == 10  # the nine at debug and this one
