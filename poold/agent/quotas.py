"""Per-job quotas the agent holds a module to while it runs.

What a job may leave under ``/out`` (bytes and entries) and what it may send to
Kafka (bytes and records). wasmtime's WASI writes files straight to the host,
with no hook between the module and the disk, and an unprivileged pod cannot
mount a size-limited filesystem, so ``/out`` is held by two means:

* ``RLIMIT_FSIZE`` while the module runs: no file can grow more than one byte
  past the quota. The write that would cross it fails with ``EFBIG`` (SIGXFSZ
  is ignored), which the module sees as a failed write, as on a full disk.
* a watcher that adds up ``/out`` every :data:`SCAN_INTERVAL_S` and once more
  at the end; a job over the byte or entry quota is stopped and ends
  ``failed``, with an error that names the quota. Between two looks a module
  can write at most what it writes in that interval (each file still capped).
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SCAN_INTERVAL_S = 0.05
MIB = 1024 * 1024


@dataclass(frozen=True)
class Quotas:
    out_bytes: int
    """``runtime.max_artifacts_mb``: what a job may keep under ``/out``."""
    out_files: int
    """``runtime.max_artifact_files``: files and folders under ``/out``."""
    output_bytes: int
    """``runtime.max_output_mb``: stdout bytes sent to Kafka as records."""
    output_records: int
    """``runtime.max_output_records``: stdout lines sent to Kafka as records."""


class Overrun:
    """The first quota a job went over; thread-safe, set once."""

    def __init__(self, on_first: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._on_first = on_first
        self.reason: str | None = None

    def __call__(self, reason: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
        self._on_first()


def scan(root: Path, *, stop_after: int) -> tuple[int, int]:
    """Bytes (of regular files, by size) and entries under ``root``; stops counting
    entries once past ``stop_after`` so a flood of files cannot stall the look."""
    total = entries = 0
    stack = [root]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for entry in it:
                entries += 1
                if entries > stop_after:
                    return total, entries
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(Path(entry.path))
                    elif stat.S_ISREG(st.st_mode):
                        total += st.st_size
    return total, entries


class OutDirWatch:
    """Holds ``/out`` to its quotas while the module runs (see the module docstring)."""

    def __init__(self, root: Path, quotas: Quotas, *, over: Callable[[str], None]) -> None:
        self._root = root
        self._quotas = quotas
        self._over = over
        # one byte past the quota, so a module that tried to write past it is seen
        # as over it. The limit holds for the whole process: the stderr log, which
        # the agent writes meanwhile, is cut there too if the quota is smaller.
        self._fsize = quotas.out_bytes + 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: tuple[int, int] | None = None

    def start(self) -> None:
        """From the thread about to run the module."""
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        self._saved = (soft, hard)
        limit = self._fsize if hard == resource.RLIM_INFINITY else min(self._fsize, hard)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        self._thread = threading.Thread(target=self._run, name="out-quota", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._saved is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, self._saved)
            self._saved = None
        self.check()

    def _run(self) -> None:
        while not self._stop.wait(SCAN_INTERVAL_S):
            if self.check():
                return

    def check(self) -> bool:
        q = self._quotas
        total, entries = scan(self._root, stop_after=q.out_files)
        if entries > q.out_files:
            self._over(
                f"the job made more than {q.out_files} files and folders under /out, its "
                "quota (runtime.max_artifact_files); it was stopped")
            return True
        if total > q.out_bytes:
            self._over(
                f"the job wrote more than {q.out_bytes / MIB:g} MiB under /out, its quota "
                "(runtime.max_artifacts_mb); writes past it failed and the job was stopped")
            return True
        return False


HOST_ALLOWANCE_MB = 256
"""What a worker may allocate beyond its job's ``memory_mb`` once the module runs:
the agent's buffers (stdout up to 4 MiB plus one record, the stderr log), Kafka
and HTTP clients, new threads' stacks."""


def cap_data(memory_mb: int) -> int | None:
    """Limit this process's data (RLIMIT_DATA: private writable memory, which
    covers the heap, wasm linear memory and tables) to what it uses now plus the
    job's ``memory_mb`` plus :data:`HOST_ALLOWANCE_MB`. The store limits are what
    holds a module to ``memory_mb``; this guard catches whatever escapes them,
    so one worker cannot take the host down with it (an allocation past it
    fails, and a worker that cannot go on dies and its job ends ``error``).
    Returns the limit in bytes, or None where /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmData:"):
            used = int(line.split()[1]) * 1024
            break
    else:
        return None
    limit = used + (memory_mb + HOST_ALLOWANCE_MB) * MIB
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit
