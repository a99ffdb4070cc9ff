"""Operator runtimes (``[runtimes.<name>]``, docs/runtimes.md) on the Kubernetes backend with a
real kube-apiserver: runner pods that mount the runtimes poold publishes on the shared
volume read-only, run by the kubelet stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from poold.atomic import place_atomic
from poold.backends.kubernetes import KubernetesBackend
from poold.backends.podtemplate import ANNOTATION_JOB, load_template, render
from poold.client.aio import AsyncClient
from poold.config import InterpreterSettings, KubernetesSettings
from poold.daemon import Daemon
from poold.data.embedded import free_port
from poold.runtime.digest import file_sha256
from poold.runtime.engine import CompileCache
from poold.types import JobId, PodName, TenantName
from tests.runtime.test_python import COMPILE_TIMEOUT_S
from tests.support.compiles import compile_held
from tests.support.daemon import TOKENS, Client, pool_filled, serving, wait_done
from tests.support.procs import stop

from .controlplane import ControlPlane
from .helpers import (
    NAMESPACE,
    RUNTIMES,
    TEMPLATE,
    Account,
    Events,
    akubectl,
    pods_of,
    settings_for,
)
from .kubelet import KubeletStandIn, read_only_unavailable
from .test_real_backend import ready, replica_env, until_ready

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module", autouse=True)
def _read_only_mounts() -> None:
    why = read_only_unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


async def test_the_standin_makes_a_read_only_mount_read_only_for_the_pod(
    deployed: ControlPlane, standin: KubeletStandIn, admin_core: Any, pool_name: str,
    tmp_path: Path,
) -> None:
    """As a kubelet would: a write to the runtimes mount fails in the pod, the same write
    with the flag off succeeds, so an agent that wrote to the shared runtimes (its compile
    cache, say) fails here as it would in a cluster."""
    runtimes = tmp_path / "slots" / "runtimes"  # the stand-in's poold-slots, subPath runtimes
    for read_only, phase in ((True, "Failed"), (False, "Succeeded")):
        name = PodName(f"poold-w-{pool_name}{'ro' if read_only else 'rw'}")
        pod = render(load_template(TEMPLATE), name=name, pool=pool_name, env={},
                     runtimes=RUNTIMES)
        container = pod["spec"]["containers"][0]
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == RUNTIMES]
        mount["readOnly"] = read_only
        container["command"] = ["touch", f"{RUNTIMES}/{name}"]
        await admin_core.create_namespaced_pod(NAMESPACE, pod)
        await akubectl(deployed, "wait", f"--for=jsonpath={{.status.phase}}={phase}",
                       f"pod/{name}", "-n", NAMESPACE, "--timeout=60s")
        log = (standin.workdir / "logs" / f"{name}.log").read_text()
        if read_only:
            assert "Read-only file system" in log, log
            assert not (runtimes / name).exists()
        else:
            assert (runtimes / name).is_file(), log
        await admin_core.delete_namespaced_pod(name, NAMESPACE)


# -- a Python job end to end: poold publishes CPython, a runner pod runs the script --------


@pytest.mark.timeout(2 * COMPILE_TIMEOUT_S + 600)  # a cold machine compiles both flavours first
async def test_a_python_script_runs_in_a_runner_pod_from_the_shared_volume(
    deployed: ControlPlane, standin: KubeletStandIn, poold_account: Account, pool_name: str,
    broker: str, tmp_path: Path, python_runtime: tuple[InterpreterSettings, Path],
) -> None:
    """deploy/'s setup: runner pods on WasmEdge (runtime.engine, and no WasmEdge CLI here,
    so a job that reached it would fail), the interpreter published by poold. Each flavour
    is ready, and its jobs leave the queue, only once its compiled form is on the volume."""
    python, compiled = python_runtime
    sha, _ = file_sha256(python.module)
    cache = CompileCache(tmp_path / "compiled")  # poold's: empty, its compiles held below,
    # as by another compiler at work (another replica's), which then leaves the artifacts
    settings = settings_for(tmp_path, broker, poold_account, pool_name,
                            runtime__cache_dir=str(cache.root.parent), runtime__engine="wasmedge")
    settings = settings.model_copy(update={"runtimes": {"python": python}})
    shared = settings.slots.root / "runtimes"
    published = CompileCache(shared / "compiled")
    daemon = Daemon(settings)

    def compiled_meanwhile(release: Callable[[], None], *, fuel: bool) -> None:
        """What the compiler holding the lock would leave: the artifact in place."""
        place_atomic(CompileCache(compiled).path(sha, fuel=fuel), cache.path(sha, fuel=fuel),
                     fsync=False)
        release()

    with contextlib.ExitStack() as held:
        plain = held.enter_context(compile_held(cache, sha, fuel=False))
        fuel = held.enter_context(compile_held(cache, sha, fuel=True))
        try:
            await daemon.start()
            await asyncio.wait_for(daemon.active.wait(), 60)
            async with aiohttp.ClientSession() as session:
                alpha = Client(daemon, session, "alpha")

                async def listed() -> dict[str, Any]:
                    [found] = (await alpha.json("GET", "/v1/runtimes", 200))["runtimes"]
                    assert found["name"] == "python" and found["module"] == sha, found
                    return dict(found)

                async def until_ready(flavour: str) -> None:
                    """Polls: ready at the first answer that says so, and only with the
                    flavour's compiled interpreter on the shared volume."""
                    async with asyncio.timeout(120):
                        while (state := (await listed())["flavours"][flavour]) != "ready":
                            assert state == "compiling", state
                            await asyncio.sleep(0.02)
                    assert published.has(sha, fuel=flavour == "fuel"), flavour

                first = await listed()
                assert (first["state"], first["flavours"]) == (
                    "compiling", {"plain": "compiling", "fuel": "compiling"}), first
                metered = await alpha.json("POST", "/v1/jobs", 202, json={
                    "runtime": "python", "script": "print(sum(range(1000)))\n",
                    "limits": {"fuel": 2_000_000_000}})
                compiled_meanwhile(plain, fuel=False)
                await until_ready("plain")
                assert not published.has(sha, fuel=True)
                await _jobs(deployed, daemon, alpha, pool_name, shared)
                # the jobs above came and went; the fuel flavour's job still waits
                waiting = await alpha.json("GET", f"/v1/jobs/{metered['id']}", 200)
                assert (waiting["state"], waiting["pod"]) == ("queued", None), waiting
                compiled_meanwhile(fuel, fuel=True)
                await until_ready("fuel")
                await wait_done(daemon, metered["id"], timeout=120)
                done = await alpha.json("GET", f"/v1/jobs/{metered['id']}", 200)
                assert done["state"] == "succeeded" and done["usage"]["fuel_consumed"] > 0, done
                assert await alpha.text(f"/v1/jobs/{metered['id']}/output") == "499500\n"
        finally:
            await daemon.stop()
    # the pods read the interpreter compiled, from the shared folder: none compiled it
    assert not list(standin.workdir.glob(f"pods/*/volumes/**/{sha}.cwasm"))


async def _run(client: Client, script: str, **fields: Any) -> dict[str, Any]:
    return await client.run_runtime("python", script=script, **fields)


async def _jobs(plane: ControlPlane, daemon: Daemon, alpha: Client, pool_name: str,
                shared: Path) -> None:
    pool = daemon.pool
    assert pool is not None
    await pool.wait_until(lambda: pool_filled(pool), 120)
    pods = await pods_of(plane, pool_name)
    script = (
        "import sys\n"
        "n = 0\n"
        "for line in sys.stdin:\n"
        "    n += 1\n"
        "    print(line.rstrip('\\n').upper())\n"
        "print(f'{n} records, args {sys.argv[1:]}', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    job = await _run(alpha, script, input=["hello pod", "über"], args=["-x", "y"])
    assert job["pod"] in pods, (job, pods)  # a runner pod of this pool ran it
    assert (job["state"], job["exit_code"]) == ("failed", 3), job
    assert job["runtime"] == "python"
    out = await alpha.text(f"/v1/jobs/{job['id']}/output")
    assert out.splitlines() == ["HELLO POD", "ÜBER"]
    assert "2 records, args ['-x', 'y']" in await alpha.text(f"/v1/jobs/{job['id']}/logs")

    # the runtime's mount is the published copy, read-only: writing there fails the
    # script with the interpreter's own error, and nothing lands on the volume; a path
    # that climbs out of it to the interpreter's folder is refused as well
    script = (
        "import sys\n"
        "try:\n"
        "    open('/usr/local/lib/../../module.wasm', 'rb')\n"
        "    print('escaped')\n"
        "except OSError as e:\n"
        "    print('escape refused', type(e).__name__)\n"
        "open('/out/kept.txt', 'w').write('kept')\n"
        "open('/usr/local/lib/written-by-a-job.txt', 'w').write('no')\n"
    )
    job = await _run(alpha, script)
    assert (job["state"], job["exit_code"]) == ("failed", 1), job
    out = (await alpha.text(f"/v1/jobs/{job['id']}/output")).splitlines()
    assert out[0].startswith("escape refused "), out
    logs = await alpha.text(f"/v1/jobs/{job['id']}/logs")
    assert "Traceback" in logs and "written-by-a-job.txt" in logs, logs
    assert [a["name"] for a in job["artifacts"]] == ["kept.txt"]
    assert not list(shared.glob("**/written-by-a-job.txt"))


async def test_pods_from_before_the_runtimes_were_configured_do_not_take_their_jobs(
    deployed: ControlPlane, standin: KubeletStandIn, poold_account: Account, pool_name: str,
    broker: str, tmp_path: Path, python_runtime: tuple[InterpreterSettings, Path],
) -> None:
    """docs/deploy.md's way to add a runtime: uncomment it and restart poold. The restarted
    poold adopts the warm runner pods the previous one left (made without the runtimes
    mount); a Python job must still run, in a pod that has the mount."""
    python, compiled = python_runtime
    before = settings_for(tmp_path, broker, poold_account, pool_name,
                          runtime__cache_dir=str(compiled))
    async with serving(before) as (daemon, _):
        assert daemon.pool is not None
        old = set(daemon.pool.workers)
    assert await pods_of(deployed, pool_name) == old, "left for the next poold to adopt"
    after = before.model_copy(update={"runtimes": {"python": python}})
    async with serving(after) as (daemon, session):
        alpha = Client(daemon, session, "alpha")
        job = await _run(alpha, "print('hello from', __name__)\n")
        assert job["state"] == "succeeded", (job, job.get("error"))
        assert job["pod"] not in old, job
        assert await alpha.text(f"/v1/jobs/{job['id']}/output") == "hello from __main__\n"
    for pod in old:  # replaced, not left running beside the pool
        await akubectl(deployed, "wait", "--for=delete", f"pod/{pod}", "-n", NAMESPACE,
                       "--timeout=60s")


async def test_a_pod_without_the_runtimes_mount_is_replaced_or_not_handed_back(
    deployed: ControlPlane, standin: KubeletStandIn, poold_account: Account, pool_name: str,
) -> None:
    """The backend of a poold with runtimes, over pods a poold without them made: an idle
    one is reported gone and deleted; one holding a job keeps it, but is not handed back
    for its tenant's next job (``pool.reuse``), which could be a Python script."""
    settings = KubernetesSettings(kubeconfig=poold_account.kubeconfig, pool_name=pool_name)
    template = load_template(TEMPLATE)
    idle, held = (PodName(f"poold-w-{pool_name}{n}") for n in ("id", "hd"))
    before = Events()
    old = KubernetesBackend(settings=settings, template=template, kafka="kafka:9092")
    await old.start(before)
    try:
        for pod in (idle, held):
            await old.create(pod)
        await before.wait(lambda: before.has("ready", idle) and before.has("ready", held))
        assert await old.claim(held, JobId("j-1"))
    finally:
        await old.stop()
    after = Events()
    new = KubernetesBackend(settings=settings, template=template, kafka="kafka:9092",
                            runtimes=RUNTIMES)
    await new.start(after)
    try:
        await after.wait(lambda: after.has("gone", idle) and after.has("ready", held))
        [gone] = [e for e in after.seen if e.pod == idle]
        assert "lacks the read-only runtimes mount" in (gone.reason or ""), gone
        [ready] = [e for e in after.seen if e.pod == held]
        assert ready.job == "j-1"
        await akubectl(deployed, "wait", "--for=delete", f"pod/{idle}", "-n", NAMESPACE,
                       "--timeout=60s")
        assert not await new.release_claim(held, job=JobId("j-1"), tenant=TenantName("alpha"),
                                           jobs=1)
        assert await pods_of(deployed, pool_name) == {held}
        annotations = new.pods[held]["metadata"]["annotations"]
        assert annotations[ANNOTATION_JOB] == "j-1", "left as it was, for the pool to delete"
    finally:
        await new.stop()


async def test_two_replicas_publish_at_once_and_the_standby_runs_python_after_a_takeover(
    deployed: ControlPlane, standin: KubeletStandIn, poold_account: Account, pool_name: str,
    broker: str, tmp_path: Path, python_runtime: tuple[InterpreterSettings, Path],
) -> None:
    """deploy/overlays/prod runs two replicas: both publish the runtime to the one shared
    volume at the same time, and a Python job runs before and after the leader is
    SIGKILLed (the standby taking over the pods the leader made with the mount)."""
    python, compiled = python_runtime
    config = tmp_path / "runtimes.toml"
    mounts = ", ".join(f"{json.dumps(guest)} = {json.dumps(str(host))}"
                       for guest, host in python.mounts.items())
    config.write_text(
        "[runtimes.python]\n"
        f"module = {json.dumps(str(python.module))}\n"
        f"mounts = {{ {mounts} }}\n"
        f"args = {json.dumps(python.args)}\n"
        f"script_name = {json.dumps(python.script_name)}\n")
    slots = tmp_path / "slots"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    try:
        for name in ("replica-a", "replica-b"):  # started together: both publish at once
            port = free_port()
            urls[name] = f"http://127.0.0.1:{port}"
            env = replica_env(tmp_path, name, broker, poold_account, pool_name, port, slots)
            env["POOLD_RUNTIME__CACHE_DIR"] = str(compiled)
            with (tmp_path / f"{name}.log").open("wb") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "poold", "serve", "--config", str(config)],
                    stdout=log, stderr=subprocess.STDOUT, env=env)
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(120):
                while not (leaders := [n for n in urls if await ready(session, urls[n])]):
                    assert all(p.poll() is None for p in procs.values()), "a replica exited"
                    await asyncio.sleep(0.1)
            [leader] = leaders
            [standby] = [n for n in urls if n != leader]
            for serving_replica in (leader, standby):
                if serving_replica == standby:
                    procs[leader].send_signal(signal.SIGKILL)
                    await until_ready(session, urls[standby], procs[standby], 60)
                async with AsyncClient(urls[serving_replica], TOKENS["alpha"]) as client:
                    job = await client.submit(
                        runtime="python", input=["a", "b"],
                        script=f"import sys\nprint('{serving_replica}:', len(sys.stdin.read()))\n")
                    done = await client.wait(job.id, timeout=120)
                    assert (done.state, done.exit_code) == ("succeeded", 0), done
                    assert await client.output(job.id) == [f"{serving_replica}: 4"]
    finally:
        for proc in procs.values():
            stop(proc, 30)
