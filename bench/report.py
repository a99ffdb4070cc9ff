"""What a run leaves behind: jobs.csv, results.json, summary.txt, and the printed table."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fixtures import REPO
from .runner import JobRow, ScenarioRun
from .stats import Summary, Verdict, ratio


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> dict[str, Any]:
    """Where the numbers were taken: hardware, software, and the code measured."""
    changed = _git("status", "--porcelain", "--untracked-files=no")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "memory_mib": _memory_mib(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "wasmtime": _version("wasmtime"),
        "aiohttp": _version("aiohttp"),
        "poold": _version("poold"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(changed),
        "git_changed_files": [line[3:] for line in (changed or "").splitlines()][:100],
    }


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 100:
        return f"{value:.2f}"
    if value < 1000:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _measured(v: Verdict) -> str:
    if v.measured is None:
        return "-"
    if v.unit == "x":
        return f"{v.measured:.1f}x"
    if v.unit == "ms":
        return f"{_ms(v.measured)} ms"
    return f"{v.measured:.1f} {v.unit}"


def table(summaries: Sequence[Summary], verdicts: Sequence[Verdict],
          header: str = "") -> str:
    """The summary as printed to stdout and kept in summary.txt."""
    lines = [header] if header else []
    cols = (f"{'scenario':<18} {'jobs':>5} {'errors':>6} {'warm':>5} "
            f"{'wait p50':>9} {'wait p90':>9} {'wait p99':>9} {'wait max':>9} "
            f"{'e2e p50':>9} {'jobs/s':>8}")
    lines += [cols, f"{'':<18} {'':>5} {'':>6} {'':>5} "
              f"{'ms':>9} {'ms':>9} {'ms':>9} {'ms':>9} {'ms':>9} {'':>8}",
              "-" * len(cols)]
    for s in summaries:
        if s.failure is not None and s.jobs == 0:
            lines.append(f"{s.scenario:<18} did not run: {s.failure}")
            continue
        tps = "-" if s.throughput is None else f"{s.throughput:.1f}"
        lines.append(
            f"{s.scenario:<18} {s.jobs:>5} {s.errors:>6} {s.warm:>5} "
            f"{_ms(s.wait_p50):>9} {_ms(s.wait_p90):>9} {_ms(s.wait_p99):>9} "
            f"{_ms(s.wait_max):>9} {_ms(s.e2e_p50):>9} {tps:>8}"
        )
    notes = []
    for s in summaries:
        if s.errors:
            states = ", ".join(f"{k} {v}" for k, v in sorted(s.states.items())
                               if k != "succeeded")
            notes.append(f"{s.scenario}: {s.errors} not succeeded ({states})")
        if s.bad_output:
            notes.append(f"{s.scenario}: {s.bad_output} jobs with wrong output")
        if s.follow_breaks:
            notes.append(f"{s.scenario}: {s.follow_breaks} of {s.jobs} output?follow=true "
                         "responses were cut off by poold before their end (the record was "
                         "read regardless)")
        if s.failure is not None and s.jobs:
            notes.append(f"{s.scenario}: stopped early: {s.failure}")
    if notes:
        lines += ["", *notes]
    value, warm, cold = ratio(summaries)
    lines.append("")
    if value is not None and warm is not None and cold is not None:
        lines.append(
            f"warm vs cold submit-to-start p50: {value:.1f}x "
            f"({cold.scenario} {_ms(cold.wait_p50)} ms / {warm.scenario} "
            f"{_ms(warm.wait_p50)} ms)"
        )
    else:
        lines.append("warm vs cold submit-to-start p50: n/a (needs scenarios with role "
                     "\"warm\" and \"cold\")")
    lines.append("")
    lines.append(f"{'target':<26} {'from':<32} {'measured':>14} {'goal':>14}  result")
    for v in verdicts:
        goal = f"{v.goal} {v.unit}" if v.unit != "x" else f"{v.goal}x"
        source = v.source if len(v.source) <= 32 else v.source[:29] + "..."
        lines.append(f"{v.target:<26} {source:<32} {_measured(v):>14} {goal:>14}  {v.result}")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, runs: Sequence[ScenarioRun]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=JobRow.columns())
        writer.writeheader()
        for run in runs:
            for row in run.rows:
                writer.writerow(row.as_csv())


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
