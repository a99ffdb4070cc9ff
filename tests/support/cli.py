"""The ``poold`` command line run as a user runs it: a process with its own environment."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(sys.executable).parent / "poold"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "poold"]
"""The installed ``poold`` script of this environment, else ``python -m poold``."""


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
    async with asyncio.timeout(90):
        out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())
