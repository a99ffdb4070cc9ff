"""An agent whose job loop crashes (a bug, a result it cannot write) says so to poold and
exits at once: the job ends ``error`` saying the worker's agent failed, promptly and
once, rather than ``timed_out`` ("its worker did not stop it") at its time limit or
"the worker died" minutes later, once the agent's HTTP server had waited out poold's
open link. Real agents, crashed on purpose at a crash point (``POOLD_AGENT_CRASH_AT``,
poold/faults.py). Every job has an hour's time limit: ``timed_out`` cannot be the
answer, and the waits below are bounds far above a prompt end (under a second) and far
below the minutes it took before."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from poold.daemon import Daemon
from poold.jobs.model import JobState
from poold.slots import Slot, read_json, write_json_atomic
from tests.support.daemon import Client, DaemonFactory, wait_done
from tests.support.procs import wait_gone
from tests.support.wasm_fixtures import module

FAILED = "the worker's agent failed and exited: InjectedCrash("
CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


def _worker_pids(daemon: Daemon) -> dict[str, int]:
    assert daemon.pool is not None and daemon.backend is not None
    return {w: pid for w in daemon.pool.workers
            for pid in [daemon.backend.pid_of(w)] if pid}  # type: ignore[attr-defined]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", ["job", "report"])
async def test_a_crashed_agent_ends_its_job_error_at_once_and_is_not_run_again(
        start_daemon: DaemonFactory, session: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """``job``: the agent read job.json and failed before the module started;
    ``report``: the module ran and its result could not be written."""
    monkeypatch.setenv("POOLD_AGENT_CRASH_AT", point)  # the fork server passes it on
    daemon = await start_daemon(pool__min_idle=1)
    alpha = Client(daemon, session, "alpha")
    workers = _worker_pids(daemon)
    job = await alpha.submit(await alpha.upload(module("upper")), input=["a"],
                             limits={"timeout_s": 3600})
    done = await wait_done(daemon, job["id"], timeout=60)
    assert done.state is JobState.ERROR, done
    assert done.error is not None and done.error.startswith(FAILED), done.error
    assert f"'{point}'" in done.error and "submit it again" in done.error, done.error
    assert done.attempts == 1, done
    assert (done.started_at is not None) == (point == "report"), done
    assert done.pod is not None and done.pod in workers, (done.pod, workers)
    assert await wait_gone([workers[done.pod]], 30) == []
    record = await alpha.json("GET", f"/v1/jobs/{job['id']}", 200)
    assert record["state"] == "error" and record["error"] == done.error, record


@dataclasses.dataclass
class AgentProcess:
    proc: asyncio.subprocess.Process
    slot: Slot
    endpoint: str
    headers: dict[str, str]


@contextlib.asynccontextmanager
async def agent_process(tmp_path: Path, broker: str, **env: str) -> AsyncIterator[AgentProcess]:
    """``poold agent`` as a runner pod runs it, ready; killed after if still running."""
    slot = Slot(tmp_path / "slot")
    slot.create()
    token = secrets.token_urlsafe(16)
    ready_read, ready_write = os.pipe()
    variables = {
        **os.environ, "POOLD_AGENT_SLOT": str(slot.dir), "POOLD_AGENT_KAFKA": broker,
        "POOLD_AGENT_CACHE": str(tmp_path / "cache"), "POOLD_AGENT_HOST": "127.0.0.1",
        "POOLD_AGENT_PORT": "0", "POOLD_AGENT_TOKEN": token,
        "POOLD_AGENT_READY_FD": str(ready_write), "POOLD_AGENT_FSYNC": "false", **env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poold", "agent", env=variables, pass_fds=(ready_write,),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    os.close(ready_write)
    try:
        with os.fdopen(ready_read, "rb") as ready:
            announced = json.loads(await asyncio.wait_for(
                asyncio.to_thread(ready.readline), 30))
        yield AgentProcess(proc, slot, announced["endpoint"],
                           {"Authorization": f"Bearer {token}"})
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.timeout(60)
async def test_an_agent_whose_job_loop_fails_reports_closes_poolds_link_and_exits(
        tmp_path: Path, broker: str, session: aiohttp.ClientSession) -> None:
    """The agent alone, with poold's side played here: a link held open as poold holds
    one to each worker. The link carries the job's end and closes, the slot holds the
    same result, and the process exits non-zero by itself (nobody kills it)."""
    async with agent_process(tmp_path, broker, POOLD_AGENT_CRASH_AT="job") as agent:
        async with session.ws_connect(agent.endpoint + "/link", headers=agent.headers,
                                      autoping=False) as link:
            write_json_atomic(agent.slot.job_json, {"job_id": "j-1"}, fsync=False)
            await link.send_str('{"op":"run"}')
            async with asyncio.timeout(30):
                message = await link.receive()
                assert message.type is aiohttp.WSMsgType.TEXT, message
                event = json.loads(message.data)
                assert event["type"] == "finished", event
                assert (await link.receive()).type in CLOSED
                code = await agent.proc.wait()
        result = event["result"]
        assert result["job_id"] == "j-1" and result["state"] == "error", result
        assert result["error"].startswith(FAILED), result
        assert read_json(agent.slot.result_json) == result
        assert code == 1, code
        assert agent.proc.stderr is not None
        said = (await agent.proc.stderr.read()).decode()
        assert "the agent's job loop failed" in said, said


@pytest.mark.timeout(60)
async def test_a_stopped_agent_still_exits_cleanly_closing_poolds_link(
        tmp_path: Path, broker: str, session: aiohttp.ClientSession) -> None:
    """A normal stop (SIGTERM: a runner pod deleted) is no crash: exit code 0, no result
    made up; poold's open link is closed rather than waited out."""
    async with agent_process(tmp_path, broker) as agent:
        async with session.ws_connect(agent.endpoint + "/link", headers=agent.headers,
                                      autoping=False) as link:
            agent.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert (await link.receive()).type in CLOSED
                code = await agent.proc.wait()
        assert code == 0, code
        assert read_json(agent.slot.result_json) is None
