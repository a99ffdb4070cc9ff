"""SIGHUP re-reads the config file's ``[pool]`` section of a running ``poold serve``.

A real process, a real signal. The test waits on what an operator sees: the
daemon's log lines (each reload ends with ``config re-read`` or ``config not
re-read``) and ``GET /v1/pool``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.daemon import TOKENS
from tests.support.wasm_fixtures import module

ADMIN = "admin-token-" + "r" * 20
TENANT = {"Authorization": f"Bearer {TOKENS['alpha']}"}
ENDS = ("config re-read", "config not re-read")
EXITED = "(poold exited)"
"""Queued when poold's stderr closes, so a test waiting for a line fails at once."""


def config_text(tmp: Path, broker: str, pool: str, server: str = "") -> str:
    """A whole config file; ``pool`` is the body of its ``[pool]`` section."""
    alpha = hashlib.sha256(TOKENS["alpha"].encode()).hexdigest()
    admin = hashlib.sha256(ADMIN.encode()).hexdigest()
    return f"""
[server]
host = "127.0.0.1"
port = 0
admin_token_sha256 = "{admin}"
{server}

[pool]
{pool}

[slots]
root = "{tmp / 'slots'}"
fsync = false

[state]
dir = "{tmp / 'state'}"
fsync = false

[kafka]
bootstrap = "{broker}"
topic_prefix = "r{os.getpid()}{tmp.name[-8:].replace('_', '')}"
partitions = 4

[runtime]
poll_interval_s = 0.05

[tenants.alpha]
token_sha256 = "{alpha}"
max_concurrent_jobs = 4
"""


class Serving:
    """``poold serve --config FILE`` with its JSON log lines queued for the test."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POOLD_")}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poold", "serve", "--config", str(self.config), env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        self.url = (await self.next("poold is serving"))["url"]

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            if line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    await self.events.put(json.loads(line))
        await self.events.put({"event": EXITED})

    async def next(self, *names: str, timeout_s: float = 60) -> dict[str, Any]:
        """The next log event named one of ``names`` (the ones before it are dropped)."""
        async with asyncio.timeout(timeout_s):
            while True:
                event = await self.events.get()
                assert event.get("event") != EXITED, f"poold exited while waiting for {names}"
                if event.get("event") in names:
                    return event

    async def hup(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Send SIGHUP; the reload's last line and the lines logged before it."""
        assert self.proc is not None
        while not self.events.empty():
            self.events.get_nowait()
        self.proc.send_signal(signal.SIGHUP)
        before: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            while True:
                event = await self.events.get()
                assert event.get("event") != EXITED, "poold exited on SIGHUP"
                if event.get("event") in ENDS:
                    return event, before
                before.append(event)

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 60)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def started() -> AsyncIterator[list[Serving]]:
    """Every process a test starts; killed if the test left it running."""
    processes: list[Serving] = []
    yield processes
    for p in processes:
        p.kill()
        if p.proc is not None:
            await p.proc.wait()
        if p._reader is not None:
            p._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await p._reader


async def pool_figures(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/v1/pool", headers=TENANT) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def until_idle(http: aiohttp.ClientSession, url: str, idle: int) -> dict[str, Any]:
    """GET /v1/pool until it shows ``idle`` idle workers (the API has no pool events)."""
    async with asyncio.timeout(60):
        while (figures := await pool_figures(http, url))["idle"] < idle:
            await asyncio.sleep(0.05)
    return figures


@pytest.mark.timeout(180)
async def test_sighup_applies_the_files_pool_and_keeps_what_put_set_that_the_file_did_not_edit(
        tmp_path: Path, broker: str, http: aiohttp.ClientSession,
        started: list[Serving]) -> None:
    path = tmp_path / "poold.toml"
    path.write_text(config_text(tmp_path, broker, "min_idle = 1\nmax_pods = 4"))
    poold = Serving(path)
    started.append(poold)
    await poold.start()
    assert (await pool_figures(http, poold.url))["min_idle"] == 1

    async with http.put(poold.url + "/v1/pool", json={"min_idle": 2},
                        headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        assert r.status == 200, await r.text()

    # the file's edit leaves min_idle alone: what PUT set stays
    path.write_text(config_text(tmp_path, broker, "min_idle = 1\nmax_pods = 5\nidle_ttl_s = 30"))
    end, _ = await poold.hup()
    assert end["event"] == "config re-read", end
    assert end["changed"] == {"pool.max_pods": {"was": 4, "now": 5},
                              "pool.idle_ttl_s": {"was": 0.0, "now": 30.0}}, end
    assert end["kept_from_pool_json"] == {"min_idle": 2}, end
    figures = await pool_figures(http, poold.url)
    assert (figures["min_idle"], figures["max"], figures["sizing"]["idle_ttl_s"]) == (2, 5, 30)

    # now the file edits min_idle: the later change wins, and pool.json forgets its own
    path.write_text(config_text(tmp_path, broker, "min_idle = 3\nmax_pods = 5\nidle_ttl_s = 30"))
    end, before = await poold.hup()
    assert end["event"] == "config re-read", end
    assert end["changed"] == {"pool.min_idle": {"was": 2, "now": 3}}, end
    replaced = [e for e in before if e["event"].startswith("the file's edit replaces")]
    assert [(e["key"], e["pool_json"], e["file"]) for e in replaced] == [("pool.min_idle", 2, 3)]
    assert json.loads((tmp_path / "state" / "pool.json").read_text()) == {}
    assert (await until_idle(http, poold.url, 3))["min_idle"] == 3

    # the same file again changes nothing
    end, _ = await poold.hup()
    assert end["event"] == "config re-read" and end["changed"] == {}, end

    # a restart gives what the reload gave
    assert await poold.stop() == 0
    again = Serving(path)
    started.append(again)
    await again.start()
    figures = await pool_figures(http, again.url)
    assert (figures["min_idle"], figures["max"], figures["sizing"]["idle_ttl_s"]) == (3, 5, 30)
    assert await again.stop() == 0


@pytest.mark.timeout(180)
async def test_sighup_with_a_bad_file_or_a_restart_only_key_keeps_poold_running(
        tmp_path: Path, broker: str, http: aiohttp.ClientSession,
        started: list[Serving]) -> None:
    path = tmp_path / "poold.toml"
    path.write_text(config_text(tmp_path, broker, "min_idle = 1\nmax_pods = 4"))
    poold = Serving(path)
    started.append(poold)
    await poold.start()

    for pool, says in [('min_idle = "many"\nmax_pods = 4', "pool.min_idle"),
                       ("min_idle = 6\nmax_pods = 4", "pool.min_idle (6) exceeds pool.max_pods"),
                       ("min_idle = 2\nmax_pods = [", "not valid TOML")]:
        path.write_text(config_text(tmp_path, broker, pool))
        end, _ = await poold.hup()
        assert end["event"] == "config not re-read" and says in end["error"], (pool, end)
        assert end["level"] == "error", end
        assert poold.proc is not None and poold.proc.returncode is None
        assert (await pool_figures(http, poold.url))["min_idle"] == 1

    # keys that need a restart are named and keep their running value; the rest applies
    path.write_text(config_text(tmp_path, broker,
                                'min_idle = 2\nmax_pods = 4\nreuse = "tenant"\nmax_starting = 2',
                                server="max_upload_mb = 7"))
    end, before = await poold.hup()
    assert end["event"] == "config re-read", end
    assert end["changed"] == {"pool.min_idle": {"was": 1, "now": 2}}, end
    restart = {e["key"]: e for e in before if e["event"].startswith("config key changed")}
    assert set(restart) == {"pool.reuse", "pool.max_starting", "server.max_upload_mb"}, before
    assert (restart["pool.reuse"]["running"], restart["pool.reuse"]["file"]) == (
        "never", "tenant")
    assert all(e["level"] == "warning" for e in restart.values())
    await until_idle(http, poold.url, 2)

    # reuse is still "never": a tenant's second job does not get the first one's worker
    headers = {**TENANT, "Content-Type": "application/wasm"}
    async with http.put(poold.url + "/v1/modules", data=module("noop"), headers=headers) as r:
        sha = (await r.json())["sha256"]
    for _ in range(2):
        async with http.post(poold.url + "/v1/jobs", json={"module": sha}, headers=TENANT) as r:
            assert r.status == 202, await r.text()
            job = await r.json()
        async with http.get(f"{poold.url}/v1/jobs/{job['id']}/output?follow=true",
                            headers=TENANT) as r:
            await r.read()
        async with http.get(f"{poold.url}/v1/jobs/{job['id']}", headers=TENANT) as r:
            record = await r.json()
        assert record["state"] == "succeeded" and record["start"] == "warm", record
    assert await poold.stop() == 0
