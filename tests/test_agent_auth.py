"""A worker's agent answers only poold: every endpoint needs the worker's own token."""

from __future__ import annotations

import aiohttp
import pytest

from poold.daemon import Daemon
from poold.sched.pool import WorkerState
from tests.support.daemon import Client
from tests.support.wasm_fixtures import module


@pytest.mark.parametrize("token", [None, "wrong", "other-worker"])
async def test_agent_endpoints_refuse_requests_without_the_workers_token(
    alpha: Client, daemon: Daemon, session: aiohttp.ClientSession, token: str | None
) -> None:
    assert daemon.pool is not None
    idle = [w for w in daemon.pool.workers.values() if w.state is WorkerState.IDLE]
    assert len(idle) >= 2
    target, other = idle[0], idle[1]
    assert target.endpoint and target.token and other.token
    assert target.token != other.token, "workers share a secret"
    secret = {"wrong": "x" * len(target.token), "other-worker": other.token}.get(token or "")
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    for method, path in [("GET", "/ready"), ("GET", "/events"), ("POST", "/cancel"),
                         ("POST", "/run"), ("GET", "/link")]:
        async with session.request(method, target.endpoint + path, headers=headers) as r:
            assert r.status == 401, (method, path, r.status)
            assert "token" in (await r.json())["error"]
    # the refused /cancel did nothing: both workers still run jobs
    for _ in range(2):
        job = await alpha.run(module("upper"), input=["still fine"])
        assert job["state"] == "succeeded", job
