"""Processes the tests look for.

Whether one is still there is two questions, because a zombie answers them apart.

A process that has exited but is not yet reaped (a zombie) no longer runs, but it is still
in the process table: its parent has not collected it. :func:`exists` counts it (a worker
its parent never reaps is left behind); :func:`running` does not (an exited process
whose reaper is itself gone, or busy, no longer does anything).
"""

from __future__ import annotations

import os
from pathlib import Path


def exists(pid: int) -> bool:
    """In the process table, a zombie included."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running(pid: int) -> bool:
    """In the process table and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # the command name may hold spaces and parentheses: the state follows the last ')'
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


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
