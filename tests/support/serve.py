"""poold as users run it: a ``poold serve`` process, which a test may SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from tests.support.daemon import TOKENS, make_settings

HEADERS = {"Authorization": f"Bearer {TOKENS['alpha']}"}
"""Tenant alpha's credentials, for requests to a :class:`PooldProcess`."""


class PooldProcess:
    """poold as users run it (``poold serve``), which a test may SIGKILL."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self, crash_at: str | None = None, *, new_session: bool = False) -> None:
        env = {**os.environ, **self.env}
        env.pop("POOLD_CRASH_AT", None)
        if crash_at:
            env["POOLD_CRASH_AT"] = crash_at
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poold", "serve", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=new_session,
        )
        assert self.proc.stderr is not None
        async with asyncio.timeout(60):
            while line := await self.proc.stderr.readline():
                event = json.loads(line) if line.startswith(b"{") else {}
                if event.get("event") == "poold is serving":
                    self.url = event["url"]
                    break
            else:
                raise AssertionError("poold exited before serving")
        self._drain = asyncio.create_task(self._discard(self.proc.stderr))

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def died(self) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), 60)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 60)
        if self.proc is not None:
            self._drain.cancel()

    def kill(self) -> None:
        """Whatever happened in the test, leave no poold behind."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def close(self) -> None:
        """A fixture's teardown: kill poold if it still runs, and reap it."""
        self.kill()
        if self.proc is not None:
            await self.proc.wait()


def serve_env(tmp: Path, broker: str, **extra: str) -> dict[str, str]:
    """``POOLD_*`` variables of a ``poold serve`` under ``tmp`` on the session's broker,
    tenant alpha configured; ``extra`` ones added."""
    settings = make_settings(tmp, broker)
    env = {
        "POOLD_SERVER__PORT": "0",
        "POOLD_SLOTS__ROOT": str(settings.slots.root),
        "POOLD_STATE__DIR": str(settings.state.dir),
        "POOLD_KAFKA__BOOTSTRAP": broker,
        "POOLD_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "POOLD_KAFKA__PARTITIONS": "4",
        "POOLD_POOL__MIN_IDLE": "1",
        "POOLD_POOL__MAX_PODS": "4",
        "POOLD_SLOTS__FSYNC": "false",
        "POOLD_RUNTIME__POLL_INTERVAL_S": "0.05",
        "POOLD_SERVER__DRAIN_TIMEOUT_S": "5",
        "POOLD_TENANTS__ALPHA__TOKEN_SHA256": settings.tenants["alpha"].token_sha256,
        "POOLD_TENANTS__ALPHA__MAX_CONCURRENT_JOBS": "4",
    }
    env.update(extra)
    return env
