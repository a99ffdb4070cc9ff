"""The bench's automatic-against-fixed sizing figures and issue 14's targets, on
made-up pool samples (the real ones come from ``make bench``)."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from bench import report, runner, sampler, scenario, sizing, stats


def parse_all(text: str) -> list[Any]:
    return list(scenario.parse_all(tomllib.loads(text)))


def test_a_sweep_runs_auto_next_to_fixed_settings() -> None:
    fixed, auto = parse_all("""
name = "even"
jobs = 10
arrival = "even"
rate = 5
sweep = [{min_idle = 4}, {min_idle = "auto", idle_ttl_s = 4, tail_s = 17}]
[pool]
max_pods = 16
""")
    assert (fixed.name, auto.name) == ("even-idle4-max16", "even-idleauto-max16")
    assert auto.pool.min_idle == "auto" and auto.pool.auto and not fixed.pool.auto
    assert (auto.pool.idle_ttl_s, auto.tail_s) == (4.0, 17.0)
    assert (fixed.pool.idle_ttl_s, fixed.tail_s) == (None, 0.0)
    assert auto.quick().tail_s == 2.0  # a smoke run does not wait for the shrink
    with pytest.raises(scenario.ScenarioError,
                       match=r'pool\.min_idle: must be a whole number or "auto"'):
        parse_all('name = "a"\njobs = 1\n[pool]\nmin_idle = "many"\n')
    with pytest.raises(scenario.ScenarioError, match="tail_s"):
        parse_all('name = "a"\njobs = 1\ntail_s = -1\n')


def _pool(t: float, idle: int, target: int, busy: int = 0) -> Any:
    return sampler.PoolSample(scenario="s", t_s=t, phase="", idle=idle, busy=busy,
                              starting=0, deleting=0, target=idle + busy, idle_target=target)


def _counters(t: float, creations: float, surplus: float) -> Any:
    return sampler.PoolSample(scenario="s", t_s=t, phase="", creations=creations,
                              surplus_retired=surplus)


def _run(min_idle: Any, *, samples: list[Any], arrival: str = "even") -> Any:
    pool = {"min_idle": min_idle, "idle_ttl_s": 4} if min_idle == "auto" else {
        "min_idle": min_idle}
    sc = scenario.parse({"name": f"r{min_idle}", "jobs": 10, "arrival": arrival, "rate": 5,
                         "pool": pool, "tail_s": 17 if min_idle == "auto" else 0})
    run = runner.ScenarioRun(sc)
    run.phases = [{"phase": "measure", "mode": "", "start_s": 0.0, "end_s": 10.0}]
    run.samples = samples
    return run


def test_figures_follow_the_target_and_the_shrink() -> None:
    samples = [_pool(t / 2, 1, 1) for t in range(4)]  # 0-1.5 s: at rest
    samples += [_pool(2.0, 1, 5), _pool(2.5, 3, 9), _pool(3.0, 6, 10)]  # the target rises
    samples += [_pool(3.0 + t / 2, 10, 10) for t in range(1, 15)]  # 3.5-10 s: 10 idle
    samples += [_pool(12.0, 10, 10), _pool(20.0, 10, 1), _pool(24.0, 2, 1),
                _pool(25.0, 1, 1), _pool(27.0, 1, 1)]  # the tail: target falls, pool shrinks
    samples += [_counters(t, 10 + t, 0) for t in range(5)]
    samples += [_counters(5.0, 15, 2), _counters(6.0, 15, 2), _counters(9.0, 20, 2),
                _counters(10.0, 21, 2)]
    f = sizing.figures(_run("auto", samples=samples))
    assert (f.rest, f.ttl_s, f.target_peak) == (1, 4.0, 10)
    assert f.target_rise_s == 2.5  # the first sample at >= 90 % of the peak (9)
    assert f.target_fall_s == 10.0  # 20 s - the end of the load (10 s)
    assert f.shrink_s == 15.0  # at 25 s the idle count is back at the floor for good
    assert f.workers_peak == 10
    # idle worker-seconds: 1 until 2.5 s, 3 for 0.5 s, 6 for 0.5 s, 10 until 10 s
    assert f.idle_worker_s == pytest.approx(1 * 2.5 + 3 * 0.5 + 6 * 0.5 + 10 * 6.5, abs=0.1)
    # two surplus retirements in 10 s, both followed by a creation within 10 s
    assert (f.surplus_per_min, f.churn_per_min) == (12.0, 12.0)


def _summary(name: str, min_idle: Any, p90: float, workers: float) -> Any:
    return stats.Summary(
        scenario=name, label=name, mode="", role=None, group="g", min_idle=min_idle,
        max_pods=16, jobs=10, errors=0, bad_output=0, follow_breaks=0, warm=10,
        wait_p50=p90 / 2, wait_p90=p90, wait_p99=p90 * 2, wait_max=p90 * 3, assign_p50=None,
        assign_p99=None, start_p50=None, start_p99=None, run_p50=None, run_p99=None,
        e2e_p50=None, e2e_p90=None, e2e_p99=None, e2e_max=None, upload_p50=None,
        wall_s=None, throughput=None, states={"succeeded": 10}, failure=None,
        workers_mean=workers)


def test_the_targets_compare_auto_with_the_best_fixed_setting_of_its_sweep() -> None:
    figs = [sizing.SizingFigures(scenario=n, group="g", min_idle=m, arrival="even",
                                 measured_s=12.0, rest=r, ttl_s=t, tail_s=tail,
                                 shrink_s=shrink, churn_per_min=churn)
            for n, m, r, t, tail, shrink, churn in [
                ("f4", 4, 4, 0.0, 0.0, None, None), ("f8", 8, 8, 0.0, 0.0, None, None),
                ("auto", "auto", 1, 4.0, 17.0, 15.0, 6.0)]]
    summaries = [_summary("f4", 4, 40.0, 5.0), _summary("f8", 8, 20.0, 9.0),
                 _summary("auto", "auto", 25.0, 7.0)]
    found = {v.target: v for v in sizing.verdicts(figs, summaries)}
    p90 = found["auto p90 / best fixed p90"]
    assert p90.source == "auto / f8" and p90.measured == 1.25 and p90.result == "PASS"
    workers = found["auto mean workers"]
    assert (workers.measured, workers.goal, workers.result) == (7.0, "<= 9.0", "PASS")
    shrink = found["idle at floor after load"]
    assert (shrink.measured, shrink.goal, shrink.result) == (15.0, "<= 14", "MISS")
    assert found["churn at a steady rate"].result == "MISS"
    # a 2-second burst is no steady rate: no churn verdict
    figs[2].measured_s = 2.0
    assert "churn at a steady rate" not in {v.target for v in sizing.verdicts(figs, summaries)}
    text = report.table(summaries, list(found.values()), "",
                        auto_sizing=sizing.table(figs, summaries))
    assert "automatic against fixed pool sizing" in text and "auto p90 / best fixed p90" in text


def test_the_model_runs_poolds_own_sizing_on_a_simulated_clock() -> None:
    # 10 jobs/s evenly, starts of 0.2 s: need 2, + 2·√2 → 5, every time
    assert sizing.modelled_target(rate=10, start_s=0.2, poisson=False) == (5.0, 5)
    # Poisson arrivals: the short window swings, and the target with it
    mean, peak = sizing.modelled_target(rate=6, start_s=0.3)
    assert 4 < mean < peak <= 16
