"""The bench's own logic without a poold: arrivals, scenario files, module variants,
/proc readings, per-mode summaries."""

from __future__ import annotations

import hashlib
import itertools
import os
import statistics
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from bench import fixtures, procmem, runner, scenario, stats


def parse_all(text: str) -> list[Any]:
    import tomllib

    return list(scenario.parse_all(tomllib.loads(text)))


# -- arrivals ---------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [(2.0, 30.0), (30.0, 2.0), (5.0, 5.0)])
def test_ramp_times_span_and_rates(a: float, b: float) -> None:
    n = 200
    times = runner.ramp_times(n, a, b)
    assert len(times) == n
    assert times[0] == 0
    gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times)]
    assert all(g > 0 for g in gaps)
    span = 2 * n / (a + b)
    assert times[-1] < span
    assert times[-1] == pytest.approx(span, rel=0.1)
    # job i is due when the expected number of arrivals a t + (b - a) t^2 / 2T reaches i
    for i, t in enumerate(times):
        assert a * t + (b - a) * t * t / (2 * span) == pytest.approx(i, abs=1e-6)
    # the gaps shrink on a ramp up, grow on a ramp down
    if a < b:
        assert gaps[0] > gaps[-1] and 1 / gaps[-1] == pytest.approx(b, rel=0.1)
    elif a > b:
        assert gaps[0] < gaps[-1] and 1 / gaps[0] == pytest.approx(a, rel=0.1)


def _scenario(**kw: Any) -> Any:
    base = {"name": "x", "jobs": 400, "module": "noop"}
    base.update(kw)
    return scenario.parse(base)


def test_arrival_patterns() -> None:
    assert runner.arrival_times(_scenario(arrival="all_at_once")) == [0.0] * 400
    even = runner.arrival_times(_scenario(arrival="even", rate=20))
    assert even[1] == pytest.approx(0.05) and even[-1] == pytest.approx(399 / 20)
    poisson = runner.arrival_times(_scenario(arrival="poisson", rate=20, seed=3))
    gaps = [b - a for a, b in itertools.pairwise(poisson)]
    assert statistics.mean(gaps) == pytest.approx(0.05, rel=0.2)
    assert statistics.stdev(gaps) == pytest.approx(0.05, rel=0.3)  # exponential: sd = mean
    assert poisson == runner.arrival_times(_scenario(arrival="poisson", rate=20, seed=3))
    up = runner.arrival_times(_scenario(arrival="ramp_up", rate_from=1, rate_to=9))
    assert up[-1] < 2 * 400 / 10


def test_ramp_needs_rates_in_the_right_order() -> None:
    with pytest.raises(scenario.ScenarioError, match="rate_from"):
        _scenario(arrival="ramp_up")
    with pytest.raises(scenario.ScenarioError, match="rate_to above"):
        _scenario(arrival="ramp_up", rate_from=10, rate_to=5)
    with pytest.raises(scenario.ScenarioError, match="rate_to below"):
        _scenario(arrival="ramp_down", rate_from=5, rate_to=10)


# -- scenario files ----------------------------------------------------------------


def test_sweep_expands_into_named_scenarios() -> None:
    found = parse_all("""
name = "sz"
jobs = 10
arrival = "poisson"
rate = 5
sweep = [{min_idle = 0}, {min_idle = 4, max_pods = 8}, {min_idle = 2, max_starting = 1}]
[pool]
max_pods = 16
""")
    assert [s.name for s in found] == ["sz-idle0-max16", "sz-idle4-max8", "sz-idle2-max16-start1"]
    assert [(s.pool.min_idle, s.pool.max_pods) for s in found] == [(0, 16), (4, 8), (2, 16)]
    assert found[2].pool.max_starting == 1
    assert {s.group for s in found} == {"sz"}


def test_sweep_rejects_unknown_keys_and_impossible_pools() -> None:
    with pytest.raises(scenario.ScenarioError, match=r"sweep\[0\]\.idle"):
        parse_all('name = "a"\njobs = 1\nsweep = [{idle = 1}]\n')
    with pytest.raises(scenario.ScenarioError, match=r"exceeds pool\.max_pods"):
        parse_all('name = "a"\njobs = 1\nsweep = [{min_idle = 9, max_pods = 4}]\n')


def test_kube_scale_scenario() -> None:
    (k,) = parse_all('kind = "kube_scale"\nname = "k"\npods = 100\nclaims = 40\n')
    assert isinstance(k, scenario.KubeScale)
    assert (k.pods, k.claims) == (100, 40)
    quick = k.quick()
    assert quick.pods <= 50 and quick.claims <= 20
    with pytest.raises(scenario.ScenarioError, match="claims"):
        parse_all('kind = "kube_scale"\nname = "k"\npods = 10\nclaims = 40\n')
    with pytest.raises(scenario.ScenarioError, match="unknown key"):
        parse_all('kind = "kube_scale"\nname = "k"\njobs = 10\n')


def test_languages_scenario() -> None:
    (lang,) = parse_all('kind = "languages"\nname = "l"\nworkload = "sieve"\n'
                        'args = ["1000"]\nquick_args = ["10"]\njobs = 8\n')
    assert isinstance(lang, scenario.Languages)
    assert lang.variants == ("wasm", "python", "python-snapshot", "native")
    quick = lang.quick()
    assert (quick.jobs, quick.args) == (3, ("10",))
    with pytest.raises(scenario.ScenarioError, match="workload"):
        parse_all('kind = "languages"\nname = "l"\nworkload = "nbody"\n')
    with pytest.raises(scenario.ScenarioError, match="variants"):
        parse_all('kind = "languages"\nname = "l"\nworkload = "sieve"\nvariants = ["ruby"]\n')
    with pytest.raises(scenario.ScenarioError, match="unknown key"):
        parse_all('kind = "languages"\nname = "l"\nworkload = "sieve"\nrate = 3\n')


def test_modes_and_their_rules() -> None:
    assert _scenario().modes() == ("",)
    assert _scenario(aged_jobs=10).modes() == ("fresh", "aged")
    assert _scenario(new_module_every=3).modes() == ("cold", "hot")
    with pytest.raises(scenario.ScenarioError, match="sequential"):
        _scenario(new_module_every=3, arrival="all_at_once")
    with pytest.raises(scenario.ScenarioError, match="aged_jobs"):
        _scenario(new_module_every=3, aged_jobs=5)
    quick = _scenario(aged_jobs=2000, quick_jobs=5).quick()
    assert quick.jobs == 5 and quick.aged_jobs == 20


def test_the_standard_set_loads() -> None:
    chosen = scenario.standard()
    names = [s.name for s in chosen]
    assert len(names) == len(set(names))
    assert {"warm-sequential", "cold-sequential", "throughput", "kube-scale"} <= set(names)
    assert any(s.name.startswith("poisson-sizing-idle0") for s in chosen)
    arrivals = {s.arrival for s in chosen if isinstance(s, scenario.Scenario)}
    assert {"sequential", "all_at_once", "even", "poisson", "ramp_up", "ramp_down"} <= arrivals


# -- modules --------------------------------------------------------------------------


def test_variants_are_valid_and_distinct() -> None:
    engine = wasmtime.Engine()
    noop = fixtures.load_module("noop")
    one, two = fixtures.with_variant(noop, "a"), fixtures.with_variant(noop, "b")
    for wasm in (one, two):
        wasmtime.Module.validate(engine, wasm)
    digests = {hashlib.sha256(w).hexdigest() for w in (noop, one, two)}
    assert len(digests) == 3


def test_large_module_is_a_wasi_command() -> None:
    small = fixtures.large_module(200, 64)  # the same generator, cheap sizes
    module = wasmtime.Module(wasmtime.Engine(), small)
    assert "_start" in {e.name for e in module.exports}
    assert len(small) > 64 * 1024


# -- /proc ------------------------------------------------------------------------------


def test_read_tree_of_this_process() -> None:
    reading = procmem.read_tree(os.getpid())
    assert reading.procs >= 1
    assert reading.rss_kib > 1024
    assert reading.count_by_role["poold"] == 1  # the root of the tree is "poold"
    if reading.pss_kib is not None:
        assert 0 < reading.pss_kib <= reading.rss_kib
    assert procmem.read_tree(2**22 + 12345).procs == 0  # no such process


# -- summaries -----------------------------------------------------------------------------


def _row(mode: str, seq: int, wait: float, *, phase: str = "measure") -> Any:
    return runner.JobRow(
        scenario="s", phase=phase, mode=mode, seq=seq, tenant="t", job_id=f"j{seq}",
        state="succeeded", exit_code=0, warm=True, pod="p", submitted_at=None,
        assigned_at=None, started_at=None, finished_at=None, wait_ms=wait, assign_ms=1.0,
        start_ms=wait - 1, run_ms=2.0, e2e_ms=wait + 10, submit_ms=1.0, sent_s=seq * 0.1,
        done_s=seq * 0.1 + 0.05, output_ok=None, follow_breaks=0, module="m",
        upload_ms=None, error=None,
    )


def test_one_summary_per_mode() -> None:
    run = runner.ScenarioRun(_scenario(aged_jobs=3, jobs=3, role="warm"))
    run.rows = ([_row("fresh", i, 5.0 + i) for i in range(3)]
                + [_row("", 3 + i, 99.0, phase="aging") for i in range(3)]
                + [_row("aged", 6 + i, 7.0 + i) for i in range(3)])
    fresh, aged = stats.summarize(run)
    assert (fresh.label, aged.label) == ("x [fresh]", "x [aged]")
    assert (fresh.jobs, aged.jobs) == (3, 3)
    assert (fresh.wait_p50, aged.wait_p50) == (6.0, 8.0)
    assert fresh.role == "warm" and aged.role is None
    assert fresh.start_p50 == 5.0
    from bench import report

    text = report.table([fresh, aged], stats.verdicts([fresh, aged]))
    assert "fresh vs aged daemon (x, aged by 3 more jobs)" in text


def test_summary_without_the_aged_rows_leaves_the_mode_out(tmp_path: Path) -> None:
    run = runner.ScenarioRun(_scenario(aged_jobs=3, jobs=2))
    run.rows = [_row("fresh", i, 5.0) for i in range(2)]
    assert [s.mode for s in stats.summarize(run)] == ["fresh"]


def test_a_plot_that_cannot_be_drawn_is_skipped_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A plot that fails once made `make bench` lose summary.txt and results.json
    (they are written after the plots)."""
    from bench import plots

    target = tmp_path / "timeline-broken.png"
    assert plots._draw(("timeline", (target, object()))) is None
    assert f"plot {target} not drawn" in capsys.readouterr().err
    assert not target.exists()
