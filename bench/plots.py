"""PNG plots of a run, drawn with matplotlib's Agg backend (no display needed).

- ``latency-cdf.png``: the CDF of submit-to-start (``wait_ms``) and of
  end-to-end latency (``e2e_ms``) of every scenario (and mode), log scale;
- ``timeline-<scenario>.png``: for one scenario, its own CDF beside the
  latency of every job over time (by when it was submitted), the pool
  (idle / busy / starting workers from ``GET /v1/pool``, its target, with
  ``min_idle = "auto"`` the idle target, and the arrivals per second) and
  poold's memory over the same time axis, with the phases marked;
- ``pool-sizing.png``: latency against memory for the pool-sizing sweep;
- ``kube-scale.png``: the fill of the pool to 1,000 pods and the claim latencies.
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import NullFormatter

from .kubescale import KubeRun
from .runner import SUCCEEDED, ScenarioRun
from .stats import Summary

DPI = 100
PHASE_COLOURS = {"warmup": "#dddddd", "measure": "#e8f1fb", "aging": "#fbeee0",
                 "tail": "#eef7e8"}
MODE_COLOURS = {"": "tab:blue", "fresh": "tab:blue", "aged": "tab:orange",
                "cold": "tab:red", "hot": "tab:green"}


def _cdf(ax: Axes, values: Sequence[float], label: str, **kw: Any) -> None:
    if not values:
        return
    ordered = sorted(max(v, 1e-3) for v in values)
    n = len(ordered)
    ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=f"{label} (n={n})",
            **kw)


def _latency_axis(ax: Axes, what: str) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{what} (ms, log scale)")
    ax.set_ylabel("fraction of jobs")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)


def _rows(run: ScenarioRun, mode: str) -> list[Any]:
    return [r for r in run.measured if r.mode == mode and r.state == SUCCEEDED]


def latency_cdf(path: Path, runs: Sequence[ScenarioRun]) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5))
    cmap = plt.get_cmap("tab20")
    i = 0
    for run in runs:
        for mode in run.scenario.modes():
            rows = _rows(run, mode)
            if not rows:
                continue
            label = run.scenario.name + (f" [{mode}]" if mode else "")
            colour = cmap(i % 20)
            i += 1
            _cdf(left, [r.wait_ms for r in rows if r.wait_ms is not None], label, color=colour)
            _cdf(right, [r.e2e_ms for r in rows if r.e2e_ms is not None], label, color=colour)
    _latency_axis(left, "submit-to-start, wait_ms")
    _latency_axis(right, "end to end, e2e_ms (client clock)")
    left.set_title("submit-to-start per scenario")
    right.set_title("end to end per scenario")
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _phases(ax: Axes, run: ScenarioRun) -> None:
    for p in run.phases:
        if p.get("end_s") is None or p["phase"] not in PHASE_COLOURS:
            continue
        ax.axvspan(p["start_s"], p["end_s"], color=PHASE_COLOURS[p["phase"]], zorder=0, lw=0)


def timeline(path: Path, run: ScenarioRun) -> Path:
    fig = plt.figure(figsize=(15, 9))
    grid = fig.add_gridspec(3, 2, width_ratios=[1, 2.3], height_ratios=[2, 1.3, 1])
    cdf = fig.add_subplot(grid[:, 0])
    lat = fig.add_subplot(grid[0, 1])
    pool = fig.add_subplot(grid[1, 1], sharex=lat)
    mem = fig.add_subplot(grid[2, 1], sharex=lat)
    name = run.scenario.name
    for mode in run.scenario.modes():
        rows = _rows(run, mode)
        label = mode or name
        colour = MODE_COLOURS.get(mode, "tab:blue")
        _cdf(cdf, [r.wait_ms for r in rows if r.wait_ms is not None], f"wait {label}",
             color=colour)
        _cdf(cdf, [r.e2e_ms for r in rows if r.e2e_ms is not None], f"e2e {label}",
             color=colour, linestyle="--")
        lat.scatter([r.sent_s for r in rows], [max(r.wait_ms or 0, 1e-3) for r in rows],
                    s=6, color=colour, label=f"wait {label}")
        lat.scatter([r.sent_s for r in rows], [max(r.e2e_ms or 0, 1e-3) for r in rows],
                    s=6, color=colour, alpha=0.25, marker="x", label=f"e2e {label}")
    others = [r for r in run.rows if r.phase != "measure" and r.wait_ms is not None]
    if others:
        lat.scatter([r.sent_s for r in others], [max(r.wait_ms or 0, 1e-3) for r in others],
                    s=3, color="grey", alpha=0.4, label="wait (warm-up / aging)")
    _latency_axis(cdf, "latency")
    cdf.set_title(f"{name}: latency CDF")
    cdf.legend(fontsize=7, loc="lower right")
    lat.set_yscale("log")
    lat.set_ylabel("ms (log)")
    lat.set_title(f"{name}: latency by submission time (blue: measured, orange: aging, "
                  "grey: warm-up)")
    lat.grid(True, alpha=0.3)
    lat.legend(fontsize=7, loc="upper right", markerscale=2)
    _phases(lat, run)

    samples = [s for s in run.samples if s.idle is not None]
    if samples:
        t = [s.t_s for s in samples]
        pool.stackplot(
            t, [s.idle or 0 for s in samples], [s.busy or 0 for s in samples],
            [s.starting or 0 for s in samples],
            labels=["idle", "busy", "starting"],
            colors=["tab:green", "tab:orange", "tab:grey"], alpha=0.8, step="post",
        )
        pool.step(t, [s.target or 0 for s in samples], where="post", color="black", lw=0.8,
                  label="target")
        if run.scenario.pool.min_idle == "auto":
            pool.step(t, [s.idle_target or 0 for s in samples], where="post", color="tab:red",
                      lw=1.0, linestyle="--", label="idle target (auto)")
    sent = [r.sent_s for r in run.rows if r.state != "not_run"]
    if sent:
        arrivals = pool.twinx()
        first, last = int(min(sent)), int(max(sent)) + 1
        arrivals.hist(sent, bins=list(range(first, last + 1)), histtype="step",
                      color="tab:blue", alpha=0.7, label="arrivals per second (right axis)")
        arrivals.set_ylabel("jobs submitted / s")
        arrivals.legend(fontsize=7, loc="upper left")
    pool.set_ylabel("workers")
    pool.set_title(f"pool (GET /v1/pool, {run.scenario.pool.min_idle} min idle, "
                   f"{run.scenario.pool.max_pods} max)")
    pool.legend(fontsize=7, loc="upper right")
    pool.grid(True, alpha=0.3)
    _phases(pool, run)

    mems = [s for s in run.samples if s.rss_mib is not None]
    if mems:
        t = [s.t_s for s in mems]
        nan = float("nan")
        mem.plot(t, [s.rss_mib or nan for s in mems], label="RSS sum", color="tab:purple")
        if any(s.pss_mib is not None for s in mems):
            mem.plot(t, [s.pss_mib or nan for s in mems], label="PSS sum", color="tab:blue")
            mem.plot(t, [s.workers_pss_mib or nan for s in mems], label="PSS of workers",
                     color="tab:cyan")
    mem.set_ylabel("MiB")
    mem.set_xlabel("seconds since poold was ready")
    mem.set_title("memory of poold's process tree (poold, broker, fork server, workers)")
    mem.legend(fontsize=7, loc="upper right")
    mem.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def pool_sizing(path: Path, summaries: Sequence[Summary]) -> Path | None:
    sized = [s for s in summaries if s.group is not None and s.jobs
             and s.pss_mean_mib is not None]
    if not sized:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, what in zip(axes, ("wait", "e2e"), strict=True):
        for key, marker in (("p50", "o"), ("p99", "^")):
            xs = [s.pss_mean_mib or 0 for s in sized]
            ys = [max(getattr(s, f"{what}_{key}") or 0, 1e-3) for s in sized]
            ax.scatter(xs, ys, marker=marker, label=f"{what} {key}")
            if key == "p99":
                for s, x, y in zip(sized, xs, ys, strict=True):
                    ax.annotate(s.label, (x, y), fontsize=6,
                                xytext=(4, 4), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xlabel("PSS of poold's process tree, mean (MiB)")
        ax.set_ylabel("ms (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("submit-to-start" if what == "wait" else "end to end")
    fig.suptitle("pool sizing sweeps (Poisson, even, ramps, burst; fixed and auto): "
                 "memory against latency")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def kube_scale(path: Path, run: KubeRun) -> Path | None:
    r = run.result
    curve = r.get("fill_curve") or []
    if not curve:
        return None
    fig, (fill, claims) = plt.subplots(1, 2, figsize=(13, 5))
    t = [c[0] for c in curve]
    fill.plot(t, [c[1] for c in curve], label="idle (ready) pods")
    fill.plot(t, [c[2] for c in curve], label="starting pods")
    fill.set_xlabel("seconds since the pool started")
    fill.set_ylabel("pods")
    rss = fill.twinx()
    rss.plot(t, [c[3] for c in curve], color="tab:purple", alpha=0.6, linestyle=":",
             label="daemon RSS (right axis)")
    rss.set_ylabel("daemon RSS (MiB)")
    rss.legend(loc="lower right", fontsize=8)
    fill.set_title(f"filling the pool to {r.get('pods')} pods "
                   f"(max_starting {r.get('max_starting')})")
    fill.legend(loc="upper left", fontsize=8)
    fill.grid(True, alpha=0.3)
    values = r.get("claim_ms") or []
    _cdf(claims, values, "take_idle + claim (fenced PATCH)")
    _cdf(claims, r.get("take_idle_ms") or [], "take_idle alone")
    _latency_axis(claims, "claim latency")
    claims.set_title(f"{len(values)} claims, one at a time")
    claims.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _draw(task: tuple[str, tuple[Any, ...]]) -> Path | None:
    """One plot; a plot that cannot be drawn is reported and skipped, so the run's
    summary.txt and results.json (written after the plots) are never lost to it."""
    name, args = task
    try:
        drawn: Path | None = globals()[name](*args)
    except Exception as e:
        target = args[0] if args and isinstance(args[0], Path) else name
        print(f"bench: plot {target} not drawn: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    return drawn


def draw_all(out: Path, runs: Sequence[ScenarioRun], summaries: Sequence[Summary],
             kube: Sequence[KubeRun]) -> list[Path]:
    """Every plot of the run, next to jobs.csv; returns the files written. The
    figures are drawn in two forked processes (matplotlib is slow and the run is
    over), or one after the other if that cannot be done."""
    tasks: list[tuple[str, tuple[Any, ...]]] = []
    if any(run.measured for run in runs):
        tasks.append(("latency_cdf", (out / "latency-cdf.png", list(runs))))
    tasks.extend(("timeline", (out / f"timeline-{run.scenario.name}.png", run))
                 for run in runs if run.rows or run.samples)
    tasks.append(("pool_sizing", (out / "pool-sizing.png", list(summaries))))
    tasks.extend(("kube_scale", (out / f"{k.scale.name}.png", k)) for k in kube)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
            drawn = list(pool.map(_draw, tasks))
    except (OSError, ValueError, BrokenProcessPool, pickle.PicklingError):
        drawn = [_draw(task) for task in tasks]
    return [p for p in drawn if p is not None]
