"""How long poold's start-up replay of the job journal takes: ``python -m bench.replay``.

Writes a journal of N jobs with four versions each (queued, assigned, running,
succeeded with its output range and usage: the lines a finished job leaves), then
times :meth:`poold.jobs.journal.JournalJobStore.open` twice, as a restart would: the
first replay, which also rewrites the file compacted, and the replay of the compacted
file. It prints one line per N with the journal's size, both times and the machine's
1-minute load average before and after (other work on the machine inflates the times:
a figure is an upper bound unless the load was below the core count).

``docs/architecture.md`` ("Replay at start-up") quotes its output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from poold.jobs.journal import JournalJobStore
from poold.jobs.model import Job, JobState, Limits, OffsetRange, to_record
from poold.protocol import Usage
from poold.types import JobId, ModuleHash, PodName, TenantName

VERSIONS = 4


def _versions(i: int) -> list[Job]:
    """The four records a succeeded job leaves in the journal."""
    t0 = datetime.now(UTC) - timedelta(days=1) + timedelta(milliseconds=i)
    queued = Job(
        id=JobId(f"j-{i:032x}"), tenant=TenantName(f"tenant{i % 10}"),
        module=ModuleHash(f"{i % 97:064x}"), module_size=32_680,
        limits=Limits(30.0, 64, None), args=("--count", str(i)), env=(("MODE", "bench"),),
        input_count=10, submitted_at=t0,
        input=OffsetRange("poold.input", i % 16, i * 10, i * 10 + 10),
        idempotency_key=f"key-{i}",
    )
    assigned = queued.evolve(state=JobState.ASSIGNED, pod=PodName(f"poold-w-{i:010x}"),
                             warm=True, start="warm", attempts=1,
                             assigned_at=t0 + timedelta(milliseconds=1))
    running = assigned.evolve(state=JobState.RUNNING, delivering=True,
                              output=OffsetRange("poold.output", i % 16, i * 10),
                              started_at=t0 + timedelta(milliseconds=2))
    done = running.evolve(
        state=JobState.SUCCEEDED, exit_code=0, delivering=False,
        output=OffsetRange("poold.output", i % 16, i * 10, i * 10 + 10),
        finished_at=t0 + timedelta(milliseconds=9), artifacts=(("report.txt", 1234),),
        usage=Usage(cpu_ms=3.2, memory_peak_bytes=1_179_648, rss_peak_bytes=31_457_280,
                    stdin_records=10, stdin_bytes=120, stdout_records=10, stdout_bytes=120,
                    stderr_bytes=0),
    )
    return [queued, assigned, running, done]


def write_journal(path: Path, jobs: int) -> int:
    """The journal a daemon that ran ``jobs`` jobs leaves (before any compaction)."""
    with open(path, "wb") as f:
        for i in range(jobs):
            for version in _versions(i):
                f.write(json.dumps(to_record(version), separators=(",", ":")).encode() + b"\n")
    return path.stat().st_size


def _open(path: Path) -> tuple[float, int]:
    store = JournalJobStore(path, fsync=True)
    began = time.perf_counter()
    count = len(store.open())
    seconds = time.perf_counter() - began
    store.close()
    return seconds, count


def measure(jobs: int, workdir: Path) -> dict[str, float]:
    path = workdir / f"jobs-{jobs}.journal"
    size = write_journal(path, jobs)
    load_before = os.getloadavg()[0]
    first, count = _open(path)
    again, count_again = _open(path)
    if count != jobs or count_again != jobs:
        raise SystemExit(f"replayed {count} and {count_again} jobs of {jobs}")
    return {"jobs": jobs, "journal_mb": size / 1e6, "first_s": first,
            "compacted_s": again, "load_before": load_before,
            "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jobs", type=int, nargs="*", default=[10_000, 100_000],
                        help="retained jobs to replay (default: 10000 100000)")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} cores; python {sys.version.split()[0]}")
    print("retained jobs | journal (4 versions per job) | first replay + compaction | "
          "replay of the compacted file | load average (1 min) before, after")
    with tempfile.TemporaryDirectory(prefix="poold-bench-replay-") as tmp:
        for jobs in args.jobs:
            r = measure(jobs, Path(tmp))
            print(f"{r['jobs']:,} | {r['journal_mb']:.1f} MB | {r['first_s']:.1f} s | "
                  f"{r['compacted_s']:.1f} s | {r['load_before']:.1f}, {r['load_after']:.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
