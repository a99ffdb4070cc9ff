"""Crash points: where the crash tests kill poold, on purpose.

``POOLD_CRASH_AT=<point>`` in poold's environment makes it SIGKILL itself when
it reaches that point, so a test can prove that a job reaches exactly one
terminal state whichever step a crash interrupts. Unset, a crash point costs
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = frozenset({"accepted", "assigned", "delivered", "running", "result", "recycling"})


def crash_point(name: str) -> None:
    if os.environ.get("POOLD_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
