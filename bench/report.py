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
from .kubescale import KubeRun
from .runner import JobRow, ScenarioRun
from .sampler import PoolSample
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


W = 28
"""Width of the label column."""


def _f(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _main_table(summaries: Sequence[Summary]) -> list[str]:
    cols = (f"{'scenario':<{W}} {'jobs':>5} {'errors':>6} {'warm':>5} "
            f"{'wait p50':>9} {'wait p90':>9} {'wait p99':>9} {'wait max':>9} "
            f"{'e2e p50':>9} {'e2e p99':>9} {'jobs/s':>8} {'load':>5}")
    lines = [cols, f"{'':<{W}} {'':>5} {'':>6} {'':>5} "
             f"{'ms':>9} {'ms':>9} {'ms':>9} {'ms':>9} {'ms':>9} {'ms':>9} {'':>8} {'':>5}",
             "-" * len(cols)]
    for s in summaries:
        if s.failure is not None and s.jobs == 0:
            lines.append(f"{s.label:<{W}} did not run: {s.failure}")
            continue
        lines.append(
            f"{s.label:<{W}} {s.jobs:>5} {s.errors:>6} {s.warm:>5} "
            f"{_ms(s.wait_p50):>9} {_ms(s.wait_p90):>9} {_ms(s.wait_p99):>9} "
            f"{_ms(s.wait_max):>9} {_ms(s.e2e_p50):>9} {_ms(s.e2e_p99):>9} "
            f"{_f(s.throughput):>8} {_f(s.load_avg[0] if s.load_avg else None):>5}"
        )
    lines.append("(load: the machine's 1-minute load average when the measurement began; "
                 "anything above the core count means other work competed for the CPU)")
    return lines


def _where_time_goes(summaries: Sequence[Summary]) -> list[str]:
    cols = (f"{'scenario':<{W}} {'queue+claim':>12} {'':>8} {'deliver+start':>14} {'':>8} "
            f"{'run':>8} {'e2e-wait-run':>13}")
    lines = ["where submit-to-start goes (per-job timestamps; ms): submitted -> assigned "
             "(queue, fair share, fenced claim) -> started (input to Kafka, module and "
             "job.json to the slot, the agent's start); the rest of e2e is the client's "
             "POST, the output follow and the record read",
             cols,
             f"{'':<{W}} {'p50':>12} {'p99':>8} {'p50':>14} {'p99':>8} {'p50':>8} {'p50':>13}",
             "-" * len(cols)]
    for s in summaries:
        if not s.jobs:
            continue
        rest = (None if s.e2e_p50 is None or s.wait_p50 is None or s.run_p50 is None
                else s.e2e_p50 - s.wait_p50 - s.run_p50)
        lines.append(f"{s.label:<{W}} {_ms(s.assign_p50):>12} {_ms(s.assign_p99):>8} "
                     f"{_ms(s.start_p50):>14} {_ms(s.start_p99):>8} {_ms(s.run_p50):>8} "
                     f"{_ms(rest):>13}")
    return lines


def _costs(summaries: Sequence[Summary]) -> list[str]:
    cols = (f"{'scenario':<{W}} {'cpu p50':>9} {'cpu p90':>9} {'run p50':>9} "
            f"{'linear p50':>11} {'rss p50':>9} {'rss max':>9}")
    lines = ["what each job cost (the records' usage, docs/metrics.md): CPU of the module's "
             "run only; the module's linear memory; its worker's peak resident memory",
             cols,
             f"{'':<{W}} {'ms':>9} {'ms':>9} {'ms':>9} {'KiB':>11} {'MiB':>9} {'MiB':>9}",
             "-" * len(cols)]
    for s in summaries:
        if not s.jobs:
            continue
        lines.append(
            f"{s.label:<{W}} {_f(s.cpu_p50, '.2f'):>9} {_f(s.cpu_p90, '.2f'):>9} "
            f"{_ms(s.run_p50):>9} "
            f"{_f(None if s.memory_p50 is None else s.memory_p50 / 1024, '.0f'):>11} "
            f"{_f(None if s.rss_p50 is None else s.rss_p50 / 2**20):>9} "
            f"{_f(None if s.rss_max is None else s.rss_max / 2**20):>9}")
    return lines


_CPU_ROLES = ("poold", "broker", "forkserver", "worker", "other", "client", "total")


def _process_cpu(summaries: Sequence[Summary]) -> list[str]:
    cols = f"{'scenario':<{W}} " + " ".join(f"{r:>10}" for r in _CPU_ROLES)
    lines = ["CPU ms per succeeded job, by process, over the measured phase (/proc; workers "
             "include those that exited; other = poold's compile process)", cols,
             "-" * len(cols)]
    lines.extend(f"{s.label:<{W}} " + " ".join(
        f"{_f(s.cpu_ms_per_job.get(r), '.2f'):>10}" for r in _CPU_ROLES)
        for s in summaries if s.cpu_ms_per_job)
    return lines


def _pair(summaries: Sequence[Summary], scenario: str, a: str, b: str
          ) -> tuple[Summary, Summary] | None:
    one = next((s for s in summaries if s.scenario == scenario and s.mode == a), None)
    two = next((s for s in summaries if s.scenario == scenario and s.mode == b), None)
    return (one, two) if one is not None and two is not None and one.jobs and two.jobs else None


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.1f}x"


def _modes(summaries: Sequence[Summary]) -> list[str]:
    lines: list[str] = []
    scenarios = list(dict.fromkeys(s.scenario for s in summaries))
    for name in scenarios:
        fa = _pair(summaries, name, "fresh", "aged")
        if fa is not None:
            fresh, aged = fa
            lines.append(
                f"fresh vs aged daemon ({name}, aged by {aged.aged_by} more jobs): "
                f"wait p50 {_ms(fresh.wait_p50)} -> "
                f"{_ms(aged.wait_p50)} ms, p99 {_ms(fresh.wait_p99)} -> {_ms(aged.wait_p99)} ms, "
                f"e2e p50 {_ms(fresh.e2e_p50)} -> {_ms(aged.e2e_p50)} ms; "
                f"tree PSS {_f(fresh.pss_mean_mib)} -> {_f(aged.pss_mean_mib)} MiB, "
                f"poold RSS+workers {_f(fresh.rss_mean_mib)} -> {_f(aged.rss_mean_mib)} MiB"
            )
        ch = _pair(summaries, name, "cold", "hot")
        if ch is not None:
            cold, hot = ch
            lines.append(
                f"compile cache cold vs hot ({name}): run p50 {_ms(cold.run_p50)} vs "
                f"{_ms(hot.run_p50)} ms ({_ratio(cold.run_p50, hot.run_p50)}), e2e p50 "
                f"{_ms(cold.e2e_p50)} vs {_ms(hot.e2e_p50)} ms "
                f"({_ratio(cold.e2e_p50, hot.e2e_p50)}); upload p50 {_ms(cold.upload_p50)} ms"
            )
    return lines


def sizing_table(summaries: Sequence[Summary]) -> list[str]:
    """The pool-sizing sweep(s): latency against memory, one line per configuration.
    p90 rather than p99: with ~100 jobs a p99 is the slowest job, which on a fresh
    daemon is one of its first (see docs/benchmarks.md)."""
    sized = [s for s in summaries if s.group is not None and s.jobs]
    if not sized:
        return []
    cols = (f"{'scenario':<{W}} {'min_idle':>8} {'max':>4} {'warm':>6} {'wait p50':>9} "
            f"{'wait p90':>9} {'e2e p50':>9} {'e2e p90':>9} {'workers':>8} {'PSS':>7} "
            f"{'RSS':>7} {'RSS peak':>9}")
    lines = ["pool sizing under load (memory of poold's process tree, sampled at 2 Hz, "
             "mean over the measured phase)", cols,
             f"{'':<{W}} {'':>8} {'':>4} {'%':>6} {'ms':>9} {'ms':>9} {'ms':>9} {'ms':>9} "
             f"{'mean':>8} {'MiB':>7} {'MiB':>7} {'MiB':>9}",
             "-" * len(cols)]
    for s in sized:
        warm = 100 * s.warm / s.jobs if s.jobs else 0
        lines.append(
            f"{s.label:<{W}} {s.min_idle:>8} {s.max_pods:>4} {warm:>6.0f} "
            f"{_ms(s.wait_p50):>9} {_ms(s.wait_p90):>9} {_ms(s.e2e_p50):>9} "
            f"{_ms(s.e2e_p90):>9} {_f(s.workers_mean):>8} {_f(s.pss_mean_mib):>7} "
            f"{_f(s.rss_mean_mib):>7} {_f(s.rss_peak_mib):>9}"
        )
    return lines


def _server(k: KubeRun) -> str:
    if k.scale.api == "real":
        return "kube-apiserver + etcd + controller manager + hollow kubelet stand-in"
    return "fake API server + instant kubelet"


def kube_table(kube: Sequence[KubeRun]) -> list[str]:
    if not kube:
        return []
    lines = ["Kubernetes backend at scale (no pod runs: an instant kubelet on the fake API "
             "server, a hollow kubelet stand-in on the real one; see docs/benchmarks.md)"]
    for k in kube:
        r = k.result
        if k.skipped:
            lines.append(f"{k.scale.name}: skipped: {k.skipped}")
            continue
        if k.failure and not r.get("fill_s"):
            lines.append(f"{k.scale.name}: did not run: {k.failure}")
            continue
        idle_pct = (100 * r["idle_cpu_s"] / r["idle_s"]) if r.get("idle_s") else None
        fill = r.get("fill_s") or 0
        lines += [
            f"{k.scale.name}: {r.get('pods')} pods (max_starting {r.get('max_starting')}) "
            f"filled in {_f(fill)} s ({_f(r['pods'] / fill if fill else None)} pods/s), "
            f"daemon CPU {_f(r.get('fill_cpu_s'), '.2f')} s for the fill, "
            f"{_f(idle_pct, '.2f')} % of a core while full and idle; "
            f"daemon RSS {_f(r.get('rss_start_mib'))} MiB at start, "
            f"{_f(r.get('rss_full_mib'))} MiB full, peak {_f(r.get('rss_peak_mib'))} MiB",
            f"{'':<4}{r.get('claims')} claims (take_idle + fenced PATCH), one at a time: "
            f"p50 {_ms(r.get('claim_p50_ms'))} ms, p90 {_ms(r.get('claim_p90_ms'))} ms, "
            f"p99 {_ms(r.get('claim_p99_ms'))} ms, max {_ms(r.get('claim_max_ms'))} ms, "
            f"{_f(r.get('claims_per_s'))} claims/s, daemon CPU "
            f"{_f(r.get('claims_cpu_s'), '.2f')} s; take_idle alone p50 "
            f"{_ms(r.get('take_idle_p50_ms'))} ms, p99 {_ms(r.get('take_idle_p99_ms'))} ms; "
            f"lost claims {r.get('claims_lost')}",
            f"{'':<4}{_server(k)} CPU {_f(k.server_cpu_s, '.2f')} s; "
            + (f"API requests {dict(sorted(k.api_requests.items()))}" if k.api_requests
               else "API requests not counted"),
        ]
        if k.failure:
            lines.append(f"{'':<4}problem: {k.failure}")
    return lines


def table(summaries: Sequence[Summary], verdicts: Sequence[Verdict],
          header: str = "", kube: Sequence[KubeRun] = (),
          auto_sizing: Sequence[str] = ()) -> str:
    """The summary as printed to stdout and kept in summary.txt."""
    lines = [header] if header else []
    lines += _main_table(summaries)
    notes = []
    for s in summaries:
        if s.errors:
            states = ", ".join(f"{k} {v}" for k, v in sorted(s.states.items())
                               if k != "succeeded")
            why = " - stopped by the run's time budget (--budget-s)" if s.budget_cut else ""
            notes.append(f"{s.label}: {s.errors} not succeeded ({states}){why}")
        if s.bad_output:
            notes.append(f"{s.label}: {s.bad_output} jobs with wrong output")
        if s.follow_breaks:
            notes.append(f"{s.label}: {s.follow_breaks} of {s.jobs} output?follow=true "
                         "responses were cut off by poold before their end (the record was "
                         "read regardless)")
        if s.failure is not None and s.jobs:
            notes.append(f"{s.label}: stopped early: {s.failure}")
    if notes:
        lines += ["", *notes]
    lines += ["", *_where_time_goes(summaries)]
    lines += ["", *_costs(summaries)]
    lines += ["", *_process_cpu(summaries)]
    value, warm, cold = ratio(summaries)
    lines.append("")
    if value is not None and warm is not None and cold is not None:
        lines.append(
            f"warm vs cold submit-to-start p50: {value:.1f}x "
            f"({cold.label} {_ms(cold.wait_p50)} ms / {warm.label} "
            f"{_ms(warm.wait_p50)} ms)"
        )
    else:
        lines.append("warm vs cold submit-to-start p50: n/a (needs scenarios with role "
                     "\"warm\" and \"cold\")")
    lines += _modes(summaries)
    sizing = sizing_table(summaries)
    if sizing:
        lines += ["", *sizing]
    if auto_sizing:
        lines += ["", *auto_sizing]
    kt = kube_table(kube)
    if kt:
        lines += ["", *kt]
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


def write_pool_csv(path: Path, runs: Sequence[ScenarioRun]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=PoolSample.columns())
        writer.writeheader()
        for run in runs:
            for sample in run.samples:
                writer.writerow(sample.as_csv())


def write_kube_csv(path: Path, kube: Sequence[KubeRun]) -> None:
    """One row per claim of the scale scenario(s)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["scenario", "claim", "claim_ms", "take_idle_ms"])
        for k in kube:
            claims = k.result.get("claim_ms") or []
            takes = k.result.get("take_idle_ms") or []
            for i, (c, t) in enumerate(zip(claims, takes, strict=False)):
                writer.writerow([k.scale.name, i, c, t])


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
