"""What a job cost, measured in the worker around the module's run.

CPU is the CPU time of the thread that runs the module (``CLOCK_THREAD_CPUTIME_ID``
from the moment the module is about to start until the runtime returns) plus that
of any child process that ran it (the WasmEdge CLI: ``RUSAGE_CHILDREN``). Neither
counts the worker's start-up, its idling, or the agent's Kafka and HTTP work on
the event loop thread.

Peak resident memory comes from one of:

* ``cgroup``: the container's cgroup v2 ``memory.peak`` (runner pods; the pod
  holds one job, so the peak of its life is the job's), when the file exists;
* the peak RSS of the child process that ran the module (``ru_maxrss``), when
  the module ran in one (the WasmEdge CLI outside a cgroup);
* ``/proc/self/status`` ``VmHWM`` of the worker itself, reset by writing ``5``
  to ``/proc/self/clear_refs`` just before the module starts (the wasmtime
  driver runs the module in the agent's process).

The wasm-level figures (linear memory, fuel) come from the runtime driver
(:class:`poold.runtime.runner.Measuring`).
"""

from __future__ import annotations

import os
import re
import resource
import time
from pathlib import Path

from poold.protocol import Usage
from poold.runtime.runner import Measuring, Runner, Sink

CGROUP_PEAK = Path("/sys/fs/cgroup/memory.peak")
_HWM = re.compile(rb"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def peak_rss() -> int | None:
    try:
        with open("/proc/self/status", "rb") as f:
            found = _HWM.search(f.read())
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the peak then covers the worker's whole life, start-up included


def _cgroup_peak() -> int | None:
    try:
        return int(CGROUP_PEAK.read_text().strip())
    except (OSError, ValueError):
        return None


def _tree_bytes(root: Path) -> int:
    """Regular files under ``root``, symlinks not followed (as artifacts are kept)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if st.st_mode & 0o170000 == 0o100000:
                total += st.st_size
    return total


class Meter:
    """One job's measurements. :meth:`begin` and :meth:`end` run on the thread that
    runs the module; the sinks count what the module writes."""

    def __init__(self, *, rss_source: str = "proc") -> None:
        self._rss_source = rss_source
        self._thread0: float | None = None
        self._children0 = 0.0
        self._maxrss0 = 0
        self.cpu_ms: float | None = None
        self.rss_peak_bytes: int | None = None
        self.stdin_records: int | None = None
        self.stdin_bytes: int | None = None
        self.stdout_bytes = 0
        self.stderr_bytes = 0

    def feeds(self, records: list[bytes]) -> None:
        self.stdin_records = len(records)
        self.stdin_bytes = sum(len(r) + 1 for r in records)

    def begin(self) -> None:
        """The module is about to start."""
        if self.stdin_records is None:
            self.stdin_records = self.stdin_bytes = 0
        reset_peak_rss()
        self._children0 = _children_cpu_s()
        self._maxrss0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        self._thread0 = time.thread_time()

    def end(self) -> None:
        """The runtime returned (the module ended, or was stopped)."""
        if self._thread0 is None:
            return
        thread = time.thread_time() - self._thread0
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = children.ru_utime + children.ru_stime - self._children0
        self.cpu_ms = round((thread + child_cpu) * 1000, 3)
        peak = _cgroup_peak() if self._rss_source == "cgroup" else None
        if peak is None and child_cpu > 0 and children.ru_maxrss > self._maxrss0:
            peak = children.ru_maxrss * 1024
        self.rss_peak_bytes = peak if peak is not None else peak_rss()

    def counting(self, sink: Sink, *, stream: str) -> Sink:
        def write(chunk: bytes) -> None:
            if stream == "stdout":
                self.stdout_bytes += len(chunk)
            else:
                self.stderr_bytes += len(chunk)
            sink(chunk)

        return write

    def usage(self, *, runner: Runner, stdout_records: int, out_dir: Path) -> Usage | None:
        """What was measured; ``None`` when the module never started."""
        if self._thread0 is None:
            return None
        runtime = runner.runtime_usage() if isinstance(runner, Measuring) else None
        return Usage(
            cpu_ms=self.cpu_ms,
            memory_peak_bytes=runtime.memory_peak_bytes if runtime else None,
            rss_peak_bytes=self.rss_peak_bytes,
            fuel_consumed=runtime.fuel_consumed if runtime else None,
            stdin_records=self.stdin_records, stdin_bytes=self.stdin_bytes,
            stdout_records=stdout_records, stdout_bytes=self.stdout_bytes,
            stderr_bytes=self.stderr_bytes, artifacts_bytes=_tree_bytes(out_dir),
        )
