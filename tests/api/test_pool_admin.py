"""``PUT /v1/pool``: the administrator re-tunes the pool at run time; the change
is validated like the config file and survives a restart."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.daemon import TOKENS, DaemonFactory

ADMIN = "admin-token-" + "z" * 20


async def put(url: str, body: Any, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
                session.put(url + "/v1/pool", json=body, headers=headers) as r):
        return r.status, await r.json()


async def get(url: str, token: str) -> dict[str, Any]:
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
                session.get(url + "/v1/pool",
                            headers={"Authorization": f"Bearer {token}"}) as r):
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


async def test_admin_retunes_the_pool_and_a_restart_keeps_it(
        start_daemon: DaemonFactory, tmp_path: Path) -> None:
    state = tmp_path / "shared-state"
    options = {"server__admin_token_sha256": hashlib.sha256(ADMIN.encode()).hexdigest(),
               "state__dir": str(state), "pool__min_idle": 1, "pool__max_pods": 6}
    daemon = await start_daemon(**options)
    url = daemon.url

    status, body = await put(url, {"min_idle": 3}, None)
    assert status == 401, body
    status, body = await put(url, {"min_idle": 3}, TOKENS["alpha"])
    assert status == 403 and "administrator" in body["error"], body
    status, body = await put(url, {"min_idle": 3}, "not-a-token-of-anyone")
    assert status == 401, body

    # validated like the config file, naming the key
    for bad, key in [({"min_idle": "many"}, "pool.min_idle"),
                     ({"min_idle": 9}, "pool.max_pods"),
                     ({"reuse": "tenant"}, "pool.reuse"),
                     ({"idle_ttl_s": -1}, "pool.idle_ttl_s")]:
        status, body = await put(url, bad, ADMIN)
        assert status == 400 and key in body["error"], (bad, body)
    assert not (state / "pool.json").exists(), "a refused change was kept"

    status, body = await put(url, {"min_idle": 3, "idle_ttl_s": 60}, ADMIN)
    assert status == 200, body
    assert body["min_idle"] == 3 and body["sizing"]["idle_ttl_s"] == 60
    assert (await get(url, TOKENS["beta"]))["min_idle"] == 3
    assert daemon.pool is not None
    await daemon.pool.wait_until(lambda: daemon.pool.figures()["idle"] >= 3, 30)  # type: ignore[union-attr]
    assert json.loads((state / "pool.json").read_text()) == {"min_idle": 3, "idle_ttl_s": 60}
    await daemon.stop()

    again = await start_daemon(**options)  # the file still says min_idle = 1
    figures = await get(again.url, TOKENS["alpha"])
    assert figures["min_idle"] == 3 and figures["sizing"]["idle_ttl_s"] == 60
    # a later change keeps the earlier ones
    status, body = await put(again.url, {"min_idle": "auto"}, ADMIN)
    assert status == 200 and body["min_idle"] == "auto", body
    assert body["sizing"]["idle_ttl_s"] == 60
