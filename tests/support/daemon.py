"""A daemon under test and a tenant's view of its HTTP API.

The fixtures that start these (``broker``, ``start_daemon``, ``daemon``, ``alpha``,
``beta``) are in ``tests/conftest.py``; a test that starts a daemon of its own with
other settings uses :func:`make_settings` and :func:`serving` from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from poold.config import Settings, load_settings
from poold.daemon import Daemon
from poold.jobs.model import Job, JobState
from poold.sched.pool import Pool
from poold.types import JobId

TOKENS = {"alpha": "token-alpha-" + "a" * 20, "beta": "token-beta-" + "b" * 20}
"""The test tenants and their bearer tokens (``make_settings`` configures both)."""

DaemonFactory = Callable[..., Awaitable[Daemon]]
"""What the ``start_daemon`` fixtures give: ``await start(pool__min_idle=0)``."""


def make_settings(tmp: Path, broker: str, **overrides: Any) -> Settings:
    """Test settings under ``tmp`` on the session's broker, as ``POOLD_*`` variables would
    give them; ``pool__min_idle=0`` style overrides."""
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

    async def run_runtime(self, runtime: str, *, timeout: float = 120,
                          **fields: Any) -> dict[str, Any]:
        """Submit a job of the operator's ``runtime`` (``script=`` and the rest as the
        API takes them), wait for the end (``timeout``); the final job record."""
        job = await self.json("POST", "/v1/jobs", 202, json={"runtime": runtime, **fields})
        await wait_done(self.daemon, job["id"], timeout=timeout)
        result: dict[str, Any] = await self.json("GET", f"/v1/jobs/{job['id']}", 200)
        return result

    async def text(self, path: str, **kw: Any) -> str:
        async with self.request("GET", path, **kw) as r:
            assert r.status == 200, await r.text()
            return await r.text()


def pool_filled(pool: Pool) -> bool:
    """The pool holds the idle workers it aims to keep: what it runs with, not what
    the settings passed in say (``pool.json`` from ``PUT /v1/pool`` is laid over
    them, and ``min_idle = "auto"`` is a measured target, its floor at start)."""
    figures = pool.figures()
    return bool(figures["idle"] >= figures["idle_target"])


async def wait_done(daemon: Daemon, job_id: str, timeout: float = 60) -> Job:
    """Wait, on the store's change events, until the job reaches a terminal state."""
    job = daemon.store.get(JobId(job_id))
    assert job is not None
    async with asyncio.timeout(timeout):
        while not job.state.terminal:
            job = await daemon.store.wait_change(job.id, job)
    return job


async def until_running(daemon: Daemon, job_id: str, timeout: float = 30) -> Job:
    """Wait, on the store's change events, until the job's module runs; the job ending
    first fails the test."""
    job = daemon.store.get(JobId(job_id))
    assert job is not None
    async with asyncio.timeout(timeout):
        while job.state is not JobState.RUNNING:
            assert not job.state.terminal, job
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
