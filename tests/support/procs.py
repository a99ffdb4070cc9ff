"""Processes the tests look for.

Whether one is still there is two questions, because a zombie answers them apart.

A process that has exited but is not yet reaped (a zombie) no longer runs, but it is still
in the process table: its parent has not collected it. :func:`exists` counts it (a worker
its parent never reaps is left behind); :func:`running` does not (an exited process
whose reaper is itself gone, or busy, no longer does anything).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path


def exists(pid: int) -> bool:
    """In the process table, a zombie included."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...); the command
    may hold spaces and parentheses, so they follow the last ')'. OSError if it is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def running(pid: int) -> bool:
    """In the process table and not a zombie."""
    try:
        return _stat(pid)[0] not in ("Z", "X")
    except OSError:
        return False


def parent(pid: int) -> int:
    """The parent's pid (OSError if ``pid`` is gone)."""
    return int(_stat(pid)[1])


def children(of: int) -> set[int]:
    """The processes whose parent is ``of``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if parent(int(entry.name)) == of:
                    found.add(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def cmdline(pid: int) -> bytes:
    """A process's command line; empty once it has gone (a child seen by
    :func:`children` may exit before it is read: poold's compile processes do)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def stop(proc: subprocess.Popen[bytes], grace_s: float, kill_wait_s: float = 10) -> None:
    """SIGTERM, ``grace_s`` to exit, then SIGKILL; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(kill_wait_s)


def working_in(root: Path) -> list[int]:
    """Processes whose working directory is under ``root``: a local worker runs in its
    slot, so these are the agents of the slots under ``root``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(root)):
            found.append(int(entry.name))
    return found


async def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait on each process's pidfd until it exits; the pids still alive at the deadline."""
    loop = asyncio.get_running_loop()
    waits: dict[int, asyncio.Future[None]] = {}
    fds = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        fds.append(fd)
        done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, lambda f=done: f.done() or f.set_result(None))
        waits[pid] = done
    try:
        if waits:
            await asyncio.wait(waits.values(), timeout=timeout)
        return [pid for pid, done in waits.items() if not done.done()]
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)
