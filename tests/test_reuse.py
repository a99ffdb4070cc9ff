"""Hot reuse (``pool.reuse = "tenant"``): a worker whose job succeeded takes the
next job of the same tenant; nothing of the last job is visible to the next
(files, environment, memory, input, log), and any other ending recycles it.

Real daemon, real agents and real WASI modules; ``residue`` reports what a
previous job could have left (memory marker, /out file, environment) and
leaves such things itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import aiohttp
import pytest

from poold.agent.settings import AgentSettings
from poold.daemon import Daemon
from poold.types import PodName
from tests.support.daemon import Client, DaemonFactory, wait_done
from tests.support.wasm_fixtures import module


async def _reusing(start_daemon: DaemonFactory, session: aiohttp.ClientSession,
                   **overrides: Any) -> tuple[Daemon, Client]:
    """A daemon with reuse on; hot workers never idle out unless a test says so,
    so only the condition under test can recycle one."""
    overrides.setdefault("pool__hot_idle_ttl_s", 0)
    daemon = await start_daemon(pool__reuse="tenant", **overrides)
    return daemon, Client(daemon, session, "alpha")


async def _hot(daemon: Daemon, count: int = 1) -> None:
    """Wait until ``count`` workers wait hot: a worker is handed back a moment
    after its job's record is final."""
    pool = daemon.pool
    assert pool is not None
    await pool.wait_until(lambda: pool.figures()["hot"] == count, 30)


async def _gone(daemon: Daemon, pod: str) -> None:
    """The worker is recycled: deleted and its slot removed."""
    pool = daemon.pool
    assert pool is not None
    await pool.wait_until(lambda: PodName(pod) not in pool.workers, 30)


async def test_the_next_job_of_a_tenant_runs_hot_and_sees_nothing_of_the_last(
    start_daemon: DaemonFactory, session: aiohttp.ClientSession
) -> None:
    daemon, alpha = await _reusing(start_daemon, session)
    first = await alpha.run(module("upper"), input=["secret input"])
    assert first["state"] == "succeeded" and first["start"] == "warm"
    sha = await alpha.upload(module("residue"))
    await _hot(daemon)
    leaving = await alpha.run(module("residue"), env={"FOO": "bar"})
    assert leaving["pod"] == first["pod"] and leaving["start"] == "hot"
    assert leaving["warm"] is True
    assert (await alpha.text(f"/v1/jobs/{leaving['id']}/output")).splitlines() == [
        "memory: clean", "file: absent", "env: 1"]
    assert [a["name"] for a in leaving["artifacts"]] == ["mark.txt"]
    assert await alpha.text(f"/v1/jobs/{leaving['id']}/logs") == "", "the last job's log"

    await _hot(daemon)
    job = await alpha.submit(sha)
    after = await wait_done(daemon, job["id"])
    assert after.pod == first["pod"] and after.start == "hot"
    out = (await alpha.text(f"/v1/jobs/{after.id}/output")).splitlines()
    assert out == ["memory: clean", "file: absent", "env: 0"], out
    # its own file only, and none of the earlier jobs' inputs or modules in the slot
    assert [name for name, _ in after.artifacts] == ["mark.txt"]
    slot = daemon.settings.slots.root / first["pod"]
    assert not (slot / "in" / "stdin").exists()


async def test_another_tenant_never_gets_a_hot_worker(
    start_daemon: DaemonFactory, session: aiohttp.ClientSession
) -> None:
    daemon, alpha = await _reusing(start_daemon, session)
    beta = Client(daemon, session, "beta")
    mine = await alpha.run(module("noop"))
    await _hot(daemon)
    theirs = await beta.run(module("noop"))
    assert theirs["pod"] != mine["pod"] and theirs["start"] == "warm"
    await _hot(daemon, 2)
    again = await alpha.run(module("noop"))
    assert again["pod"] == mine["pod"] and again["start"] == "hot"
    await _hot(daemon, 2)
    figures = await alpha.json("GET", "/v1/pool", 200)
    assert figures["hot"] == 2


async def test_recycled_after_max_jobs_per_worker(
    start_daemon: DaemonFactory, session: aiohttp.ClientSession
) -> None:
    daemon, alpha = await _reusing(start_daemon, session, pool__max_jobs_per_worker=2)
    one = await alpha.run(module("noop"))
    await _hot(daemon)
    two = await alpha.run(module("noop"))
    assert two["pod"] == one["pod"] and two["start"] == "hot"
    await _gone(daemon, one["pod"])
    three = await alpha.run(module("noop"))
    assert three["pod"] != one["pod"] and three["start"] == "warm"


async def test_recycled_after_hot_idle_ttl(
    start_daemon: DaemonFactory, session: aiohttp.ClientSession
) -> None:
    daemon, alpha = await _reusing(start_daemon, session, pool__hot_idle_ttl_s=0.3)
    one = await alpha.run(module("noop"))
    await _gone(daemon, one["pod"])
    two = await alpha.run(module("noop"))
    assert two["pod"] != one["pod"] and two["start"] == "warm"


async def _ends_failed(alpha: Client, daemon: Daemon) -> dict[str, Any]:
    return await alpha.run(module("exitcode"), args=["3"])


async def _ends_trapped(alpha: Client, daemon: Daemon) -> dict[str, Any]:
    return await alpha.run(module("spin"), limits={"fuel": 100_000})


async def _ends_over_memory(alpha: Client, daemon: Daemon) -> dict[str, Any]:
    return await alpha.run(module("growmem"), limits={"memory_mb": 2})


async def _ends_timed_out(alpha: Client, daemon: Daemon) -> dict[str, Any]:
    return await alpha.run(module("spin"), limits={"timeout_s": 0.3})


async def _ends_cancelled(alpha: Client, daemon: Daemon) -> dict[str, Any]:
    sha = await alpha.upload(module("ticker"))
    job = await alpha.submit(sha, limits={"timeout_s": 60})
    async with alpha.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
        assert await r.content.readline() == b"tick 1\n"
        await alpha.json("DELETE", f"/v1/jobs/{job['id']}", 200)
        await r.read()
    await wait_done(daemon, job["id"])
    result: dict[str, Any] = await alpha.json("GET", f"/v1/jobs/{job['id']}", 200)
    return result


async def _ends_with_the_worker_killed(alpha: Client, daemon: Daemon) -> dict[str, Any]:
    assert daemon.backend is not None
    sha = await alpha.upload(module("ticker"))
    job = await alpha.submit(sha, limits={"timeout_s": 60})
    async with alpha.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
        assert await r.content.readline() == b"tick 1\n"
        record = await alpha.json("GET", f"/v1/jobs/{job['id']}", 200)
        pid = daemon.backend.pid_of(PodName(record["pod"]))  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
        await r.read()
    await wait_done(daemon, job["id"])
    result: dict[str, Any] = await alpha.json("GET", f"/v1/jobs/{job['id']}", 200)
    return result


@pytest.mark.parametrize(("ending", "state"), [
    (_ends_failed, "failed"),
    (_ends_trapped, "failed"),
    (_ends_over_memory, "failed"),
    (_ends_timed_out, "timed_out"),
    (_ends_cancelled, "cancelled"),
    (_ends_with_the_worker_killed, "error"),
], ids=["failure", "trap", "memory-cap", "timeout", "cancel", "lost-worker"])
async def test_any_ending_but_success_recycles_the_worker(
    start_daemon: DaemonFactory, session: aiohttp.ClientSession, ending: Any, state: str
) -> None:
    daemon, alpha = await _reusing(start_daemon, session)
    warm = await alpha.run(module("noop"))
    assert warm["state"] == "succeeded"
    await _hot(daemon)
    ended = await asyncio.wait_for(ending(alpha, daemon), 60)
    assert ended["state"] == state, ended
    assert ended["pod"] == warm["pod"] and ended["start"] == "hot"
    await _gone(daemon, ended["pod"])
    after = await alpha.run(module("noop"))
    assert after["pod"] != ended["pod"] and after["start"] == "warm"


async def test_a_hot_workers_next_job_comes_over_the_line_already_open(
    start_daemon: DaemonFactory, session: aiohttp.ClientSession
) -> None:
    daemon, alpha = await _reusing(start_daemon, session)
    first = await alpha.run(module("noop"))
    await _hot(daemon)
    assert daemon.pool is not None
    worker = daemon.pool.workers[PodName(first["pod"])]
    link = worker.link
    assert link is not None and link.reusable
    second = await alpha.run(module("upper"), input=["over", "the same line"])
    assert second["pod"] == first["pod"] and second["start"] == "hot"
    assert (await alpha.text(f"/v1/jobs/{second['id']}/output")).splitlines() == [
        "OVER", "THE SAME LINE"]
    assert "processed 2 lines" in await alpha.text(f"/v1/jobs/{second['id']}/logs")
    await _hot(daemon)
    assert worker.link is link, "a new connection was opened for a hot job"


@pytest.mark.parametrize(("ttl", "linger"), [(0, "inf"), (10, "310.0"), (600, "900.0")])
async def test_a_hot_workers_agent_waits_longer_than_poold_keeps_it(
    start_daemon: DaemonFactory, ttl: float, linger: str
) -> None:
    """The agent exits by itself this long after a job (its safety net should poold
    vanish): with a fixed 300 s a hot worker kept longer (or for ever) died on its
    own timer and was counted as a lost idle worker."""
    daemon = await start_daemon(pool__reuse="tenant", pool__hot_idle_ttl_s=ttl)
    assert daemon.backend is not None
    assert daemon.backend._agent_env["POOLD_AGENT_LINGER_S"] == linger  # type: ignore[attr-defined]
    assert AgentSettings.from_env({
        **daemon.backend._agent_env,  # type: ignore[attr-defined]
        "POOLD_AGENT_SLOT": "/s", "POOLD_AGENT_CACHE": "/c", "POOLD_AGENT_TOKEN": "t",
    }).linger_s == float(linger)
