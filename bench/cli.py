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
from .report import machine, table, write_csv, write_json
from .runner import ScenarioRun, run_scenario
from .scenario import STANDARD, Scenario, ScenarioError, load, standard
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
    return p


def _select(paths: Sequence[Path], quick: bool) -> list[Scenario]:
    chosen = [load(p) for p in paths] if paths else standard()
    names = [s.name for s in chosen]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ScenarioError(f"scenario names must be unique in one run: {', '.join(twice)}")
    for s in chosen:
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


async def _run_all(scenarios: Sequence[Scenario], out: Path) -> list[ScenarioRun]:
    return [await run_scenario(s, out / "logs") for s in scenarios]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    try:
        scenarios = _select(args.scenarios, args.quick)
    except (ScenarioError, FixtureError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    out = _out_dir(args.results_dir)
    started = datetime.now(UTC)
    began = time.monotonic()
    host = machine()
    (out / "logs").mkdir()
    runs = asyncio.run(_run_all(scenarios, out))
    duration = time.monotonic() - began

    summaries = [summarize(r) for r in runs]
    checks = verdicts(summaries)
    header = (
        f"poold bench {started.strftime('%Y-%m-%d %H:%M:%S')} UTC"
        f"{' (quick)' if args.quick else ''}: {host['cpu_model']}, {host['cores']} cores, "
        f"{(host['memory_mib'] or 0) / 1024:.1f} GiB; poold {host['poold']}, "
        f"wasmtime {host['wasmtime']}, {host['python']}; "
        f"commit {(host['git_commit'] or '?')[:12]}{' (dirty)' if host['git_dirty'] else ''}\n"
    )
    text = table(summaries, checks, header)
    text += f"\nrun time {duration:.1f} s; results in {out}\n"
    print(text, end="")

    write_csv(out / "jobs.csv", runs)
    (out / "summary.txt").write_text(text, encoding="utf-8")
    results: dict[str, Any] = {
        "started_at": started.isoformat(),
        "duration_s": round(duration, 3),
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "quick": args.quick,
        "machine": host,
        "method": {
            "wait_ms": "record's started_at - submitted_at (poold's clock)",
            "assign_ms": "record's assigned_at - submitted_at",
            "e2e_ms": "client clock: just before POST /v1/jobs -> terminal record received "
                      "(after GET output?follow=true returned)",
            "percentiles": "nearest rank",
            "throughput": "succeeded jobs / client wall time from first POST to last "
                          "terminal record",
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
                "summary": s.as_dict(),
            }
            for r, s in zip(runs, summaries, strict=True)
        ],
        "targets": [v.as_dict() for v in checks],
    }
    write_json(out / "results.json", results)
    return 1 if any(r.failure for r in runs) else 0
