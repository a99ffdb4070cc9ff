"""A runtime's job that waits for its interpreter says why, in its record (``waiting``),
in ``poold jobs get``/``list`` and in ``poold run``, until it leaves the queue.

The runtime is the ``tinyreactor.wat`` stand-in, made unique per test so that its
compilation is this test's own, and the compilation is held for real on the compile
cache's lock (:func:`tests.support.compiles.compile_held`) until the test lets go.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from poold.config import InterpreterSettings, Settings
from poold.daemon import Daemon
from poold.jobs.model import Job, JobState
from poold.modules.compiler import Precompiler
from poold.modules.runtimes import ago
from poold.runtime.engine import CompileCache
from poold.types import JobId
from tests.support.cli import Done, environ, poold, spawned
from tests.support.compiles import compile_held
from tests.support.daemon import TOKENS, Client, make_settings, serving, wait_done
from tests.support.wasm_fixtures import module, with_custom_section

pytestmark = pytest.mark.timeout(180)

FUEL = {"timeout_s": 30, "fuel": 10_000_000}
STARTS = "; the job starts when it is done"


@pytest.fixture
def reactor(tmp_path: Path, broker: str) -> tuple[Settings, CompileCache, str]:
    wasm = with_custom_section(module("tinyreactor"), f"poold-test-{tmp_path.name}", b"")
    path = tmp_path / "reactor.wasm"
    path.write_bytes(wasm)
    settings = make_settings(tmp_path / "d", broker).model_copy(
        update={"runtimes": {"tiny": InterpreterSettings(module=path)}})
    return settings, CompileCache(settings.cache_dir), hashlib.sha256(wasm).hexdigest()


@contextlib.asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[Client]:
    async with serving(settings) as (daemon, session):
        yield Client(daemon, session, "alpha")


def _precompiler(daemon: Daemon) -> Precompiler:
    assert daemon.modules is not None and daemon.modules.precompiler is not None
    return daemon.modules.precompiler


async def _compiled(daemon: Daemon, sha: str, flavour: str) -> None:
    """Until the flavour's compilation has ended, on the runtimes' own wake-up."""
    assert daemon.scheduler is not None and daemon.scheduler.runtimes is not None
    changed = asyncio.Event()
    daemon.scheduler.runtimes.on_change(changed.set)
    done = _precompiler(daemon).done
    async with asyncio.timeout(60):
        while not any(s == sha and f == flavour for s, f, _ in done):
            await changed.wait()
            changed.clear()


async def _left_the_queue(daemon: Daemon, job_id: str) -> Job:
    job = daemon.store.get(JobId(job_id))
    assert job is not None
    async with asyncio.timeout(60):
        while job.state is JobState.QUEUED:
            job = await daemon.store.wait_change(job.id, job)
    return job


async def _record(client: Client, job_id: str) -> dict[str, Any]:
    record: dict[str, Any] = await client.json("GET", f"/v1/jobs/{job_id}", 200)
    return record


async def _listed(client: Client, job_id: str) -> dict[str, Any]:
    page = await client.json("GET", "/v1/jobs", 200)
    [found] = [j for j in page["jobs"] if j["id"] == job_id]
    assert isinstance(found, dict)
    return found




async def test_a_waiting_job_says_what_it_waits_for_until_it_leaves_the_queue(
        reactor: tuple[Settings, CompileCache, str], tmp_path: Path) -> None:
    settings, cache, sha = reactor
    with compile_held(cache, sha, fuel=False) as release_plain, \
            compile_held(cache, sha, fuel=True) as release_fuel:
        async with _serving(settings) as served:
            await _waits_and_says_so(served, sha, tmp_path, release_plain, release_fuel)


async def _waits_and_says_so(served: Client, sha: str, tmp_path: Path,
                             release_plain: Callable[[], None],
                             release_fuel: Callable[[], None]) -> None:
    daemon = served.daemon
    env = environ(tmp_path / "home", POOLD_URL=daemon.url, POOLD_TOKEN=TOKENS["alpha"])

    async def cli(*args: str) -> Done:
        return await poold(*args, env=env)

    await _precompiler(daemon).begun(sha, fuel=False, within_s=60)
    plain = (await served.json("POST", "/v1/jobs", 202,
                               json={"runtime": "tiny", "script": ""}))
    # the 202 says it already
    assert plain["state"] == "queued", plain
    assert plain["waiting"]["reason"] == "compiling", plain
    job = await _record(served, plain["id"])
    message = job["waiting"]["message"]
    assert message.startswith("waiting for the runtime 'tiny' to finish compiling "
                              "(started "), message
    assert message.endswith(STARTS), message
    assert (await _listed(served, plain["id"]))["waiting"] == job["waiting"]
    exported = await served.text("/v1/jobs/export?format=ndjson")
    [row] = [json.loads(line) for line in exported.splitlines()]
    assert row["waiting_reason"] == "compiling", row
    assert row["waiting_message"].startswith("waiting for the runtime 'tiny'"), row

    # the fuel flavour is compiled after the plain one: queued behind it
    fuelled = await served.json("POST", "/v1/jobs", 202, json={
        "runtime": "tiny", "script": "", "limits": FUEL})
    message = (await _record(served, fuelled["id"]))["waiting"]["message"]
    assert message == ("waiting for the runtime 'tiny' to be compiled in its fuel-metered "
                       "form, which jobs with limits.fuel need (queued behind its plain "
                       f"form){STARTS}"), message

    # the CLI: STATE says why (one word), -o wide the sentence, run prints it
    got = await cli("jobs", "get", plain["id"])
    assert got.rc == 0, got
    assert got.out.splitlines()[1].split()[1] == "queued:compiling", got.out
    described = await cli("jobs", "describe", plain["id"])
    assert described.rc == 0, described
    [line] = [li for li in described.out.splitlines() if li.startswith("Waiting:")]
    # the same sentence (the seconds since the compile started go on)
    assert line.startswith("Waiting:   waiting for the runtime 'tiny' to finish compiling "
                           "(started ") and line.endswith(STARTS), described.out
    # a script that gives up waiting learns why it did not end
    waited = await cli("jobs", "wait", plain["id"], "--timeout", "0.2")
    assert waited.rc == 75, waited
    assert f"job {plain['id']} is still queued after 0.2 s: waiting for the runtime 'tiny' " \
        "to finish compiling (started " in waited.err, waited.err
    wide = await cli("jobs", "get", plain["id"], "-o", "wide")
    assert "WAITING" in wide.out and "to finish compiling" in wide.out, wide.out
    listed = await cli("jobs", "list", "-o", "wide")
    assert listed.out.count("queued:compiling") == 2, listed.out
    assert "queued behind its plain form" in listed.out, listed.out
    script = tmp_path / "s.py"
    script.write_text("")
    detached = await cli("run", "--runtime", "tiny", str(script), "-d")
    assert detached.rc == 0, detached
    # (with -d nothing but the id; in the foreground the sentence goes to stderr)
    assert detached.out.strip().startswith("j-") and not detached.err, detached

    release_plain()
    await _compiled(daemon, sha, "plain")
    # once it leaves the queue, nothing to wait for
    left = await _left_the_queue(daemon, plain["id"])
    assert (await _record(served, plain["id"]))["waiting"] is None, left
    assert (await wait_done(daemon, plain["id"])).exit_code == 6
    assert (await _record(served, plain["id"]))["waiting"] is None
    described = await cli("jobs", "describe", plain["id"])
    assert "State:     failed" in described.out.splitlines(), described.out
    assert "Exit Code: 6" in described.out.splitlines(), described.out
    assert "Waiting" not in described.out, described.out

    await _precompiler(daemon).begun(sha, fuel=True, within_s=60)
    message = (await _record(served, fuelled["id"]))["waiting"]["message"]
    assert message.startswith("waiting for the runtime 'tiny' to finish compiling its "
                              "fuel-metered form, which jobs with limits.fuel need "
                              "(started "), message
    async with spawned("run", "--runtime", "tiny", str(script), "--fuel", "10000000",
                       env=env) as proc:
        assert proc.stderr is not None
        async with asyncio.timeout(60):
            said = (await proc.stderr.readline()).decode()
        # poold run tells why nothing comes yet, before any output
        assert said.startswith("poold: job j-") and "is waiting for the runtime 'tiny' " \
            "to finish compiling its fuel-metered form" in said, said
        release_fuel()
        async with asyncio.timeout(60):
            await proc.wait()
        assert proc.returncode == 6, proc.returncode
    assert (await wait_done(daemon, fuelled["id"])).exit_code == 6
    assert (await _record(served, fuelled["id"]))["waiting"] is None


@pytest.mark.parametrize(("seconds", "said"), [
    (0.4, "0 s ago"), (59, "59 s ago"), (60, "1 min ago"), (150, "2 min ago"),
    (3599, "59 min ago"), (3900, "1 h 5 min ago"), (-2, "0 s ago"),
])
def test_how_long_ago_a_compile_started_reads(seconds: float, said: str) -> None:
    assert ago(seconds) == said
