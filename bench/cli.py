"""``python -m bench``: run scenarios, print the summary, write the results.

Exit status: 0 when every scenario ran (whatever the numbers: a MISS is a
finding, not a failure), 1 when a scenario could not run at all, 2 for
bad arguments or scenario files.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .fixtures import REPO, FixtureError, load_module
from .kubescale import KubeRun, run_kube_scale
from .languages import LangRun, run_languages
from .languages import as_json as languages_json
from .languages import draw as draw_languages
from .languages import table as languages_table
from .languages import write_csv as write_languages_csv
from .report import (
    machine,
    table,
    write_csv,
    write_json,
    write_kube_csv,
    write_pool_csv,
)
from .runner import ScenarioRun, run_scenario
from .scenario import (
    STANDARD,
    AnyScenario,
    KubeScale,
    Languages,
    Scenario,
    ScenarioError,
    load,
    standard,
)
from .sizing import figures as sizing_figures
from .sizing import table as sizing_table
from .sizing import verdicts as sizing_verdicts
from .stats import summarize, verdicts

DEFAULT_RESULTS = REPO / "bench" / "results"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark a real poold subprocess over its HTTP API. Without scenario "
        f"files, runs the standard set: {', '.join(STANDARD)}.",
    )
    p.add_argument("scenarios", nargs="*", type=Path, metavar="SCENARIO.toml",
                   help="scenario files to run (default: the standard set in bench/scenarios)")
    p.add_argument("--quick", action="store_true",
                   help="shrink every scenario to a few jobs (quick_jobs, else at most 10)")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS,
                   help="where the run's <UTC date-time>/ folder goes (default: %(default)s)")
    p.add_argument("--only", metavar="NAME", action="append", default=[],
                   help="run only the scenarios whose name starts with NAME (repeatable)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="time budget of the whole run in seconds (default %(default)s, so that "
                        "make bench ends within 10 minutes even on a busy machine): a scenario "
                        "still measuring when its share runs out stops, and its unfinished "
                        "jobs are reported as not_run; 0 = no budget")
    p.add_argument("--profile", action="store_true",
                   help="run each poold under cProfile: logs/<scenario>.poold.prof and "
                        ".profile.txt (slows poold down: not for the figures)")
    return p


def _select(paths: Sequence[Path], quick: bool, only: Sequence[str] = ()) -> list[AnyScenario]:
    chosen = [s for p in paths for s in load(p)] if paths else standard()
    if only:
        chosen = [s for s in chosen if any(s.name.startswith(o) for o in only)]
        if not chosen:
            raise ScenarioError(f"no scenario name starts with {', '.join(only)}")
    names = [s.name for s in chosen]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ScenarioError(f"scenario names must be unique in one run: {', '.join(twice)}")
    for s in chosen:
        if isinstance(s, Scenario):
            load_module(s.module, base=Path(s.source).parent if s.source else None)
    return [s.quick() for s in chosen] if quick else chosen


def _out_dir(root: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    out = root / stamp
    n = 1
    while out.exists():
        n += 1
        out = root / f"{stamp}-{n}"
    out.mkdir(parents=True)
    return out


PLOT_RESERVE_S = 45.0
"""Kept from the budget for drawing the plots at the end."""
SCENARIO_RESERVE_S = 12.0
"""Kept from the budget for each scenario still to come (start, settle, stop)."""


async def _run_all(scenarios: Sequence[AnyScenario], out: Path, profile: bool = False,
                   budget_s: float = 0.0
                   ) -> tuple[list[ScenarioRun], list[KubeRun], list[LangRun]]:
    runs: list[ScenarioRun] = []
    kube: list[KubeRun] = []
    langs: list[LangRun] = []
    began = time.perf_counter()
    for i, s in enumerate(scenarios):
        deadline = None
        if budget_s > 0:
            later = len(scenarios) - i - 1
            deadline = began + budget_s - PLOT_RESERVE_S - SCENARIO_RESERVE_S * later
        if isinstance(s, KubeScale):
            kube.append(await run_kube_scale(s, out / "logs", deadline=deadline))
        elif isinstance(s, Languages):
            langs.append(await run_languages(s, out / "logs", deadline=deadline))
        else:
            runs.append(await run_scenario(s, out / "logs", profile=profile,
                                           deadline=deadline))
    return runs, kube, langs


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    try:
        scenarios = _select(args.scenarios, args.quick, args.only)
    except (ScenarioError, FixtureError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    out = _out_dir(args.results_dir)
    started = datetime.now(UTC)
    began = time.monotonic()
    host = machine()
    (out / "logs").mkdir()
    runs, kube, langs = asyncio.run(_run_all(scenarios, out, args.profile, args.budget_s))
    measured_s = time.monotonic() - began

    per_run = [summarize(r) for r in runs]
    summaries = [s for group in per_run for s in group]
    sized = [f for f in (sizing_figures(r) for r in runs) if f is not None]
    checks = verdicts(summaries) + sizing_verdicts(sized, summaries)
    header = (
        f"poold bench {started.strftime('%Y-%m-%d %H:%M:%S')} UTC"
        f"{' (quick)' if args.quick else ''}: {host['cpu_model']}, {host['cores']} cores, "
        f"{(host['memory_mib'] or 0) / 1024:.1f} GiB; poold {host['poold']}, "
        f"wasmtime {host['wasmtime']}, {host['python']}; "
        f"commit {(host['git_commit'] or '?')[:12]}{' (dirty)' if host['git_dirty'] else ''}\n"
    )
    text = table(summaries, checks, header, kube, auto_sizing=sizing_table(sized, summaries))
    if langs:
        text += languages_table(langs)
        write_languages_csv(out / "languages.csv", langs)

    write_csv(out / "jobs.csv", runs)
    write_pool_csv(out / "pool.csv", runs)
    if kube:
        write_kube_csv(out / "kube-claims.csv", kube)
    plots: list[str] = []
    if not args.no_plots:
        from .plots import draw_all  # noqa: PLC0415 - matplotlib is slow to import

        plots = [p.name for p in draw_all(out, runs, summaries, kube)]
        drawn = draw_languages(out / "languages.png", langs) if langs else None
        if drawn is not None:
            plots.append(drawn.name)
    duration = time.monotonic() - began
    text += (f"\nrun time {duration:.1f} s ({measured_s:.1f} s of scenarios); "
             f"results in {out}\n")
    print(text, end="")
    (out / "summary.txt").write_text(text, encoding="utf-8")
    results: dict[str, Any] = {
        "started_at": started.isoformat(),
        "duration_s": round(duration, 3),
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "quick": args.quick,
        "profiled": args.profile,
        "budget_s": args.budget_s,
        "machine": host,
        "method": {
            "wait_ms": "record's started_at - submitted_at (poold's clock)",
            "assign_ms": "record's assigned_at - submitted_at",
            "e2e_ms": "client clock: just before POST /v1/jobs -> terminal record received "
                      "(after GET output?follow=true returned)",
            "percentiles": "nearest rank",
            "throughput": "succeeded jobs / client wall time from first POST to last "
                          "terminal record",
            "start_ms": "record's started_at - assigned_at",
            "pool_samples": "GET /v1/pool at 10 Hz; memory (RSS and PSS summed over poold's "
                            "process tree, from /proc) on every 5th sample",
            "times": "sent_s, done_s, t_s, phase bounds: seconds since poold answered ready",
        },
        "scenarios": [
            {
                "definition": r.scenario.describe(),
                "poold_config": r.config,
                "module_sha256": r.module_sha256,
                "pool_before": r.pool_before,
                "daemon": r.daemon,
                "wall_s": round(r.wall_s, 3),
                "client_cpu_s": r.client_cpu_s,
                "poold_cpu_s": r.poold_cpu_s,
                "phases": r.phases,
                "summaries": [s.as_dict() for s in group],
                "pool_samples": [sample.as_csv() for sample in r.samples],
                "sampler_errors": r.sampler_errors,
            }
            for r, group in zip(runs, per_run, strict=True)
        ],
        "kube_scale": [
            {
                "definition": k.scale.describe(),
                "wall_s": round(k.wall_s, 3),
                "failure": k.failure,
                "skipped": k.skipped,
                "api_server_cpu_s": k.server_cpu_s,
                "api_requests": k.api_requests,
                "pods_readied": k.pods_readied,
                "daemon": k.result,
            }
            for k in kube
        ],
        "sizing": [f.as_dict() for f in sized],
        "languages": [languages_json(r) for r in langs],
        "targets": [v.as_dict() for v in checks],
        "plots": plots,
    }
    write_json(out / "results.json", results)
    failures = [r.failure for r in runs] + [k.failure for k in kube] + [r.failure for r in langs]
    return 1 if any(failures) else 0
