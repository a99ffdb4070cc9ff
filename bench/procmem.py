"""Memory and CPU of a process tree, read from /proc (Linux only).

poold's footprint is poold itself plus every process below it: the embedded
Kafka broker, the fork server and the workers forked from it. Two sums are
kept for that tree:

- **RSS** (``VmRSS``): what ``ps`` shows. Forked workers share most of their
  pages with the fork server, so summing RSS counts those shared pages once
  per worker: an upper bound.
- **PSS** (``Pss`` in ``smaps_rollup``): each shared page split between the
  processes sharing it; the sum is what the tree really occupies.

Each process is also put in a role (``poold``, ``broker``, ``forkserver``,
``worker``, ``other``) so the cost of a worker can be told apart from the
fixed cost of the daemon.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROLES = ("poold", "broker", "forkserver", "worker", "other")


@dataclass
class TreeMemory:
    """One reading of a process tree."""

    procs: int = 0
    rss_kib: int = 0
    pss_kib: int | None = None
    """None when smaps_rollup could not be read (an old kernel, another user)."""
    cpu_s: float = 0.0
    """User + system CPU time of the processes alive now (not of those already gone)."""
    rss_by_role: dict[str, int] = field(default_factory=dict)
    pss_by_role: dict[str, int] = field(default_factory=dict)
    count_by_role: dict[str, int] = field(default_factory=dict)
    cpu_by_role: dict[str, float] = field(default_factory=dict)


def _stat(pid: int) -> tuple[int, float, str] | None:
    """(parent pid, CPU seconds, state letter) of ``pid``; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command may contain spaces and parentheses: split after the last ')'
    rest = text[text.rfind(")") + 2:].split()
    try:
        return int(rest[1]), (int(rest[11]) + int(rest[12])) / CLOCK_TICKS, rest[0]
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Still there and not a zombie (an exited worker not yet reaped holds no memory)."""
    stat = _stat(pid)
    return stat is not None and stat[2] not in ("Z", "X")


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        found = _stat(int(entry.name))
        if found is not None:
            children.setdefault(found[0], []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _role(pid: int, root: int, parent: int) -> str:
    if pid == root:
        return "poold"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return "other"
    if "tansu" in cmd or "broker" in cmd.split(" ", 2)[1:2]:
        return "broker"
    if "forkserver" in cmd:
        return "forkserver" if parent == root else "worker"
    if "agent" in cmd:
        return "worker"
    return "other"


def _rss_kib(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return None


def _pss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return None


def read_tree(root: int, *, pss: bool = True) -> TreeMemory:
    """Memory of ``root`` and its descendants now (an empty reading if it is gone)."""
    out = TreeMemory()
    pss_ok = pss
    for pid in descendants(root):
        stat = _stat(pid)
        rss = _rss_kib(pid)
        pss_value = _pss_kib(pid) if pss_ok else None
        if stat is None or rss is None or not _alive(pid):
            continue  # gone (or a zombie) while being read: left out of every sum
        role = _role(pid, root, stat[0])
        out.procs += 1
        out.rss_kib += rss
        out.cpu_s += stat[1]
        out.rss_by_role[role] = out.rss_by_role.get(role, 0) + rss
        out.count_by_role[role] = out.count_by_role.get(role, 0) + 1
        out.cpu_by_role[role] = out.cpu_by_role.get(role, 0.0) + stat[1]
        if pss_ok:
            if pss_value is not None:
                out.pss_by_role[role] = out.pss_by_role.get(role, 0) + pss_value
            elif pid == root:
                pss_ok = False  # unreadable (permissions, an old kernel): no PSS at all
            # else: a process exiting while it was read (its memory is going away)
    if pss_ok and out.procs:
        out.pss_kib = sum(out.pss_by_role.values())
    else:
        out.pss_by_role = {}
    return out


def self_rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB: now and the peak."""
    rss = hwm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


@dataclass
class CpuSnapshot:
    """CPU seconds of each process of a tree, by role, at one moment; and what the
    fork server's reaped children (workers that exited) used in total."""

    cpu: dict[int, tuple[str, float]] = field(default_factory=dict)
    reaped_s: float = 0.0


def _reaped(pid: int) -> float:
    """CPU seconds of ``pid``'s children it has waited for (cutime + cstime)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    rest = text[text.rfind(")") + 2:].split()
    try:
        return (int(rest[13]) + int(rest[14])) / CLOCK_TICKS
    except (IndexError, ValueError):
        return 0.0


def cpu_snapshot(root: int) -> CpuSnapshot:
    snap = CpuSnapshot()
    pids = descendants(root)
    parents = {pid: (_stat(pid) or (0, 0.0, "X"))[0] for pid in pids}
    for pid in pids:
        stat = _stat(pid)
        if stat is None:
            continue
        role = _role(pid, root, parents.get(pid, 0))
        snap.cpu[pid] = (role, stat[1])
        if role == "forkserver":
            snap.reaped_s += _reaped(pid)
    return snap


def cpu_between(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds by role between two snapshots. Workers come and go: those alive
    at the end count from the start (or from birth); those that exited between
    count through the fork server's reaped-children time, less what they had
    already used at the start."""
    out = dict.fromkeys(ROLES, 0.0)
    for pid, (role, cpu) in after.cpu.items():
        start = before.cpu.get(pid)
        out[role] += cpu - (start[1] if start is not None and start[0] == role else 0.0)
    gone_before = sum(cpu for pid, (role, cpu) in before.cpu.items()
                      if role == "worker" and pid not in after.cpu)
    out["worker"] += max(0.0, after.reaped_s - before.reaped_s - gone_before)
    return {role: round(max(0.0, s), 4) for role, s in out.items()}
