"""Crash points: where the crash tests make poold or an agent fail, on purpose.

``POOLD_CRASH_AT=<point>`` in poold's environment makes it SIGKILL itself when
it reaches that point, so a test can prove that a job reaches exactly one
terminal state whichever step a crash interrupts.

``POOLD_AGENT_CRASH_AT=<point>`` in an agent's environment makes its job loop
raise :class:`InjectedCrash` there (a bug, a failed write of the result): the
agent must report what it can and exit at once, not linger while poold waits.
Unset, a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

from poold.errors import Error

POINTS = frozenset({"accepted", "assigned", "delivered", "running", "result", "recycling"})

AGENT_POINTS = frozenset({"job", "report"})
"""``job``: the agent has read ``in/job.json`` and not yet accepted the job (the
module never starts); ``report``: the module has run and its result is not yet
written (the write fails)."""


class InjectedCrash(Error):
    """An agent's crash point was reached (``POOLD_AGENT_CRASH_AT``)."""


def crash_point(name: str) -> None:
    if os.environ.get("POOLD_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def agent_crash_point(name: str) -> None:
    if os.environ.get("POOLD_AGENT_CRASH_AT") == name:
        raise InjectedCrash(f"crash point {name!r} reached (POOLD_AGENT_CRASH_AT)")
