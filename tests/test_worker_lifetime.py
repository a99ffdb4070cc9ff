"""No worker outlives the poold that made it, whatever kills poold; a restarted
poold ends what an earlier one left before it removes their slots."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from poold.daemon import Daemon
from poold.types import PodName
from tests.support.daemon import Client
from tests.support.procs import children, cmdline, wait_gone, working_in
from tests.support.serve import HEADERS, PooldProcess, serve_env
from tests.support.wasm_fixtures import module


@pytest.fixture
async def poold(tmp_path: Path, broker: str) -> AsyncIterator[PooldProcess]:
    process = PooldProcess(serve_env(tmp_path, broker))
    try:
        yield process
    finally:
        await process.close()
        slots = Path(process.env["POOLD_SLOTS__ROOT"])
        for pid in working_in(slots):  # never leave one behind, even when the test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def start_running_job(poold: PooldProcess) -> tuple[int, list[int]]:
    """poold in its own session with a job running; its fork server and workers."""
    await poold.start(new_session=True)
    assert poold.proc is not None
    async with aiohttp.ClientSession() as http:
        async with http.put(poold.url + "/v1/modules", data=module("ticker"),
                            headers=HEADERS) as r:
            sha = (await r.json())["sha256"]
        async with http.post(poold.url + "/v1/jobs", headers=HEADERS,
                             json={"module": sha, "limits": {"timeout_s": 120}}) as r:
            job = await r.json()
        async with http.get(f"{poold.url}/v1/jobs/{job['id']}/output?follow=true",
                            headers=HEADERS) as r:
            assert await r.content.readline() == b"tick 1\n"  # the module is running
    servers = [pid for pid in children(poold.proc.pid)
               if b"poold.backends.forkserver" in cmdline(pid)]
    assert len(servers) == 1, servers
    workers = working_in(Path(poold.env["POOLD_SLOTS__ROOT"]))
    assert workers, "no worker process found"
    return servers[0], workers


@pytest.mark.timeout(120)
async def test_workers_die_when_poold_alone_is_killed(poold: PooldProcess) -> None:
    forkserver, workers = await start_running_job(poold)
    # stopped, the fork server cannot act on poold's pipe closing: the kernel has to
    os.kill(forkserver, signal.SIGSTOP)
    try:
        assert poold.proc is not None
        poold.proc.kill()
        assert await wait_gone([forkserver, *workers], 20) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(forkserver, signal.SIGKILL)


@pytest.mark.timeout(120)
async def test_workers_die_when_poolds_process_group_is_killed(poold: PooldProcess) -> None:
    forkserver, workers = await start_running_job(poold)
    assert poold.proc is not None
    # workers run in process groups of their own, so the group kill misses them
    os.killpg(poold.proc.pid, signal.SIGKILL)
    try:
        assert await wait_gone([forkserver, *workers], 20) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(forkserver, signal.SIGKILL)


@pytest.mark.timeout(120)
async def test_a_restarted_poold_ends_leftovers_before_removing_their_slots(
    poold: PooldProcess,
) -> None:
    slots = Path(poold.env["POOLD_SLOTS__ROOT"])
    slot = slots / "poold-w-0123456789"
    (slot / "in").mkdir(parents=True)
    # what the issue found: the fork server's command line, parent 1, its own
    # session, working in its slot, deaf to SIGTERM
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time; "
         "signal.signal(signal.SIGTERM, signal.SIG_IGN); sys.stdout.write('up\\n'); "
         "sys.stdout.flush(); time.sleep(600)", "-m", "poold.backends.forkserver"],
        cwd=slot, start_new_session=True, stdout=subprocess.PIPE,
    )
    try:
        assert leftover.stdout is not None
        assert leftover.stdout.readline() == b"up\n"
        assert leftover.pid in working_in(slots)
        await poold.start()
        assert leftover.poll() is not None or leftover.wait(10) == -signal.SIGKILL
        assert leftover.returncode == -signal.SIGKILL
        assert not slot.exists(), "the leftover's slot was not removed"
    finally:
        leftover.kill()
        leftover.wait()
        if leftover.stdout is not None:
            leftover.stdout.close()
        await poold.stop()


SLEEPER_NOTE = "sleeping\n"


@pytest.mark.timeout(60)
async def test_sigterm_ends_a_worker_whose_module_sleeps_in_a_host_call(
    alpha: Client, daemon: Daemon
) -> None:
    """An epoch interrupt cannot reach a module asleep inside WASI; the worker
    must still stop on SIGTERM instead of waiting an hour for it."""
    assert daemon.backend is not None
    sha = await alpha.upload(module("hostsleep"))
    job = await alpha.submit(sha, limits={"timeout_s": 600})
    async with alpha.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
        assert await r.content.readline() == SLEEPER_NOTE.encode()
        record = await alpha.json("GET", f"/v1/jobs/{job['id']}", 200)
        pid = daemon.backend.pid_of(PodName(record["pod"]))  # type: ignore[attr-defined]
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        assert await wait_gone([pid], 15) == [], "the worker ignored SIGTERM"
        await r.read()


def _limit(pid: int, name: str) -> int | None:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(name):
            soft = line[len(name):].split()[0]
            return None if soft == "unlimited" else int(soft)
    raise AssertionError(f"{name} not in /proc/{pid}/limits")


async def test_a_running_worker_is_capped_at_its_jobs_memory(
    alpha: Client, daemon: Daemon
) -> None:
    """Behind the store limits, the worker process itself cannot take more than its
    job's memory_mb and a fixed allowance (RLIMIT_DATA); its /out writes are
    capped per file at the quota (RLIMIT_FSIZE)."""
    assert daemon.backend is not None
    sha = await alpha.upload(module("ticker"))
    job = await alpha.submit(sha, limits={"timeout_s": 60, "memory_mb": 64})
    async with alpha.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
        assert await r.content.readline() == b"tick 1\n"
        record = await alpha.json("GET", f"/v1/jobs/{job['id']}", 200)
        pid = daemon.backend.pid_of(PodName(record["pod"]))  # type: ignore[attr-defined]
        assert pid is not None
        data = _limit(pid, "Max data size")
        fsize = _limit(pid, "Max file size")
        status = Path(f"/proc/{pid}/status").read_text()
        used = int(status.split("VmData:")[1].split()[0]) * 1024
        await alpha.json("DELETE", f"/v1/jobs/{job['id']}", 200)
        await r.read()
    assert data is not None, "the worker's data size is unlimited"
    assert used < data <= used + (64 + 256 + 64) * 2**20, (used, data)
    assert fsize == daemon.settings.runtime.max_artifacts_mb * 2**20 + 1
