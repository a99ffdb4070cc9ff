"""The ``poold`` command line run as a user runs it: a process with its own environment."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(sys.executable).parent / "poold"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "poold"]
"""The installed ``poold`` script of this environment, else ``python -m poold``."""

FOREGROUND = [sys.executable, "-c", "import os, signal, sys; "
              "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"]
"""Runs the command after it with SIGINT at its default, as a terminal's foreground
command has it. A shell that starts the test run in the background (``&``, nohup)
leaves SIGINT ignored in every child, Python keeps an ignored SIGINT ignored, and a
test of what Ctrl-C does would then wait for ever."""


@dataclass
class Done:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def environ(home: Path, **extra: str) -> dict[str, str]:
    """No POOLD_ variables of the caller's, a fresh HOME, the client config inside it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POOLD_", "XDG_"))}
    env["HOME"] = str(home)
    env["POOLD_CLIENT_CONFIG"] = str(home / ".config" / "poold" / "config.toml")
    env.update(extra)
    return env


async def poold(*args: str, env: dict[str, str], stdin: bytes | None = None) -> Done:
    proc = await asyncio.create_subprocess_exec(
        *COMMAND, *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):
            out, err = await proc.communicate(stdin)
    finally:
        await _reap(proc)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


@contextlib.asynccontextmanager
async def spawned(*args: str, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """``poold *args`` left running (a watch, a follow), its output piped, SIGINT
    as a user's Ctrl-C finds it; killed and reaped when the block ends, so a
    failing test leaves no process or open pipe behind for a later test."""
    proc = await asyncio.create_subprocess_exec(
        *FOREGROUND, *COMMAND, *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        await _reap(proc)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.communicate()
