"""FakeKubelet: real processes behind pods, observed through kubernetes-asyncio."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.watch import Watch

from tests.support.procs import running

from .kubelet import FakeKubelet
from .server import FakeApiServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

NS = "pool"

# A stand-in agent: serves /ready and /env on $(POD_IP):8080, exits 0 on SIGTERM.
AGENT = r"""
import http.server, json, os, signal, subprocess, sys
ip, port = sys.argv[1], int(sys.argv[2])
if os.environ.get("SPAWN_CHILD"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print("child", child.pid, flush=True)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/ready":
            code, body = 200, b"ok"
        elif self.path == "/env":
            code, body = 200, json.dumps(dict(os.environ)).encode()
        else:
            code, body = 404, b"no"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
def on_term(*_):
    print("got SIGTERM", flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
server = http.server.ThreadingHTTPServer((ip, port), Handler)
print("listening", ip, port, flush=True)
server.serve_forever()
"""


def agent_pod(
    name: str,
    *,
    env: list[dict[str, Any]] | None = None,
    probe: bool = True,
    **spec: Any,
) -> Any:
    container: dict[str, Any] = {
        "name": "agent",
        "image": "poold:dev",
        "command": [sys.executable, "-c", AGENT],
        "args": ["$(POD_IP)", "8080"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
        + (env or []),
    }
    if probe:
        container["readinessProbe"] = {"httpGet": {"path": "/ready", "port": 8080}}
    return {
        "metadata": {"name": name, "labels": {"app": "poold"}, "annotations": {"note": "hi"}},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def script_pod(name: str, code: str, **spec: Any) -> Any:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "x", "command": [sys.executable, "-c", code]}],
            **spec,
        },
    }


def condition(pod: Any, type_: str) -> bool:
    return any(c.type == type_ and c.status == "True" for c in pod.status.conditions or [])


def is_ready(pod: Any) -> bool:
    return condition(pod, "Ready")


def phase_is(*phases: str) -> Callable[[Any], bool]:
    return lambda pod: pod.status.phase in phases


async def wait_pod(
    core: CoreV1Api, name: str, predicate: Callable[[Any], bool], timeout: float = 15
) -> Any:
    """Watch one pod (from its current state) until ``predicate`` holds."""

    async def watch() -> Any:
        async with Watch() as w:
            stream = w.stream(core.list_namespaced_pod, NS, field_selector=f"metadata.name={name}")
            async for event in stream:
                if event["type"] != "DELETED" and predicate(event["object"]):
                    return event["object"]
        raise AssertionError("watch ended")

    return await asyncio.wait_for(watch(), timeout)


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        return json.loads(await resp.text())


async def get_json_once_listening(url: str, *, within_s: float = 15.0) -> Any:
    """GET ``url`` once the pod's process listens: Running means started, as on a real
    kubelet, not yet listening (the agent binds its port a moment later)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        try:
            return await get_json(url)
        except aiohttp.ClientConnectorError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_pod_runs_a_real_process_and_becomes_ready(
    fake_core_v1: CoreV1Api, fake_kubelet: FakeKubelet
) -> None:
    await fake_core_v1.create_namespaced_pod(NS, agent_pod("a1"))
    await fake_core_v1.create_namespaced_pod(NS, agent_pod("a2"))
    pod = await wait_pod(fake_core_v1, "a1", is_ready)
    other = await wait_pod(fake_core_v1, "a2", is_ready)
    assert pod.status.phase == "Running"
    ip = pod.status.pod_ip
    assert ip.startswith("127.0.")
    assert ip != "127.0.0.1"
    assert other.status.pod_ip != ip  # both agents bind port 8080
    assert pod.spec.node_name == "fakekube-node"
    assert pod.status.start_time is not None
    types = {c.type: c for c in pod.status.conditions}
    assert set(types) >= {"PodScheduled", "Initialized", "ContainersReady", "Ready"}
    assert all(c.last_transition_time is not None for c in types.values())
    (cs,) = pod.status.container_statuses
    assert cs.ready
    assert cs.state.running.started_at is not None
    pid = fake_kubelet.processes["a1"]
    assert running(pid)
    env = await get_json(f"http://{ip}:8080/env")
    assert env["POD_IP"] == ip
    assert env["HOSTNAME"] == "a1"
    log = await fake_core_v1.read_namespaced_pod_log("a1", NS)
    assert f"listening {ip} 8080" in log
    assert fake_kubelet.read_log("a1") == log


async def test_env_from_field_ref_and_expansion(
    fake_core_v1: CoreV1Api, fake_kubelet: FakeKubelet
) -> None:
    def ref(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = [
        {"name": "MY_NAME", **ref("metadata.name")},
        {"name": "MY_NS", **ref("metadata.namespace")},
        {"name": "MY_UID", **ref("metadata.uid")},
        {"name": "APP", **ref("metadata.labels['app']")},
        {"name": "NOTE", **ref("metadata.annotations['note']")},
        {"name": "ID", "value": "$(MY_NS)/$(MY_NAME)"},
        {"name": "LITERAL", "value": "$$(MY_NAME) $(UNDEFINED)"},
    ]
    created = await fake_core_v1.create_namespaced_pod(NS, agent_pod("envy", env=env))
    pod = await wait_pod(fake_core_v1, "envy", is_ready)
    got = await get_json(f"http://{pod.status.pod_ip}:8080/env")
    assert got["MY_NAME"] == "envy"
    assert got["MY_NS"] == NS
    assert got["MY_UID"] == created.metadata.uid
    assert got["APP"] == "poold"
    assert got["NOTE"] == "hi"
    assert got["ID"] == f"{NS}/envy"
    assert got["LITERAL"] == "$(MY_NAME) $(UNDEFINED)"


async def test_sub_path_expr_mount_rewrites_env(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api, tmp_path: Path
) -> None:
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "DATA_DIR", "value": "/var/lib/poold"},
        {"name": "CACHE_DIR", "value": "/var/lib/poold/cache"},
        {"name": "SCRATCH", "value": "/scratch"},
        {"name": "OTHER", "value": "/var/lib/poold-not-a-mount"},
    ]
    body = agent_pod(
        "mounty",
        env=env,
        volumes=[
            {"name": "data", "persistentVolumeClaim": {"claimName": "poold-data"}},
            {"name": "tmp", "emptyDir": {}},
        ],
    )
    body["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "data", "mountPath": "/var/lib/poold", "subPathExpr": "agents/$(POD_NAME)"},
        {"name": "tmp", "mountPath": "/scratch"},
    ]
    async with FakeKubelet(fake_api, pvc_paths={"poold-data": tmp_path}) as kubelet:
        await fake_core_v1.create_namespaced_pod(NS, body)
        pod = await wait_pod(fake_core_v1, "mounty", is_ready)
        got = await get_json(f"http://{pod.status.pod_ip}:8080/env")
        local = tmp_path / "agents" / "mounty"
        assert got["DATA_DIR"] == str(local)
        assert got["CACHE_DIR"] == str(local / "cache")
        assert local.is_dir()
        assert Path(got["SCRATCH"]).is_dir()
        assert got["OTHER"] == "/var/lib/poold-not-a-mount"
        assert kubelet.mounts("mounty")["/var/lib/poold"] == local


async def test_unknown_claim_leaves_pod_unschedulable(
    fake_core_v1: CoreV1Api, fake_kubelet: FakeKubelet
) -> None:
    body = agent_pod("nopvc", volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "x"}}])
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "d", "mountPath": "/d"}]
    await fake_core_v1.create_namespaced_pod(NS, body)

    def unschedulable(pod: Any) -> bool:
        return any(
            c.type == "PodScheduled" and c.reason == "Unschedulable"
            for c in pod.status.conditions or []
        )

    pod = await wait_pod(fake_core_v1, "nopvc", unschedulable)
    assert pod.status.phase == "Pending"
    assert not pod.spec.node_name
    await fake_core_v1.delete_namespaced_pod("nopvc", NS)  # unbound: removed at once


async def test_delete_kills_process_and_pod_disappears(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api, fake_kubelet: FakeKubelet
) -> None:
    await fake_core_v1.create_namespaced_pod(NS, agent_pod("doomed"))
    pod = await wait_pod(fake_core_v1, "doomed", is_ready)
    pid = fake_kubelet.processes["doomed"]
    events: list[tuple[str, bool]] = []
    async with Watch() as w:
        stream = w.stream(
            fake_core_v1.list_namespaced_pod,
            NS,
            resource_version=pod.metadata.resource_version,
            field_selector="metadata.name=doomed",
        )
        deleting = await fake_core_v1.delete_namespaced_pod("doomed", NS)
        assert deleting.metadata.deletion_timestamp is not None
        async for event in stream:
            events.append((event["type"], event["object"].metadata.deletion_timestamp is not None))
            if event["type"] == "DELETED":
                break
    assert events[0] == ("MODIFIED", True)
    assert events[-1] == ("DELETED", True)
    await fake_kubelet.wait_for_exit("doomed")
    assert not running(pid)
    assert "doomed" not in fake_kubelet.processes
    assert "got SIGTERM" in fake_kubelet.read_log("doomed")
    assert fake_api.get_pod(NS, "doomed") is None


async def test_delete_with_zero_grace_kills_at_once(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api, fake_kubelet: FakeKubelet
) -> None:
    await fake_core_v1.create_namespaced_pod(NS, agent_pod("quick"))
    await wait_pod(fake_core_v1, "quick", is_ready)
    pid = fake_kubelet.processes["quick"]
    await fake_core_v1.delete_namespaced_pod("quick", NS, grace_period_seconds=0)
    assert fake_api.get_pod(NS, "quick") is None
    await fake_kubelet.wait_for_exit("quick")
    assert not running(pid)
    assert "got SIGTERM" not in fake_kubelet.read_log("quick")


@pytest.mark.parametrize(
    ("code", "phase", "exit_code", "reason"),
    [
        ("raise SystemExit(0)", "Succeeded", 0, "Completed"),
        ("raise SystemExit(3)", "Failed", 3, "Error"),
    ],
)
async def test_process_exit_sets_phase_and_exit_code(
    fake_core_v1: CoreV1Api,
    fake_kubelet: FakeKubelet,
    code: str,
    phase: str,
    exit_code: int,
    reason: str,
) -> None:
    await fake_core_v1.create_namespaced_pod(NS, script_pod("job", code))
    pod = await wait_pod(fake_core_v1, "job", phase_is("Succeeded", "Failed"))
    assert pod.status.phase == phase
    term = pod.status.container_statuses[0].state.terminated
    assert term.exit_code == exit_code
    assert term.reason == reason
    assert not is_ready(pod)


async def test_never_ready_hook(fake_core_v1: CoreV1Api, fake_kubelet: FakeKubelet) -> None:
    fake_kubelet.set_never_ready(lambda pod: pod["metadata"]["name"].startswith("stuck"))
    await fake_core_v1.create_namespaced_pod(NS, agent_pod("stuck"))
    await fake_core_v1.create_namespaced_pod(NS, agent_pod("fine"))
    await wait_pod(fake_core_v1, "fine", is_ready)
    stuck = await wait_pod(fake_core_v1, "stuck", phase_is("Running"))
    assert not is_ready(stuck)
    # Its probe would pass: only the hook holds it back.
    assert await get_json_once_listening(f"http://{stuck.status.pod_ip}:8080/env")
    fake_kubelet.set_never_ready(None)
    await wait_pod(fake_core_v1, "stuck", is_ready)


async def test_pending_forever_hook(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api, fake_kubelet: FakeKubelet
) -> None:
    fake_kubelet.set_pending_forever(lambda pod: True)

    def backing_off(pod: Any) -> bool:
        statuses = pod.status.container_statuses or []
        return (
            bool(statuses)
            and statuses[0].state.waiting is not None
            and (statuses[0].state.waiting.reason == "ImagePullBackOff")
        )

    await fake_core_v1.create_namespaced_pod(NS, agent_pod("pulling"))
    pod = await wait_pod(fake_core_v1, "pulling", backing_off)
    assert pod.status.phase == "Pending"
    assert "pulling" not in fake_kubelet.processes
    await fake_core_v1.delete_namespaced_pod("pulling", NS)
    await fake_api.wait_until(lambda: fake_api.get_pod(NS, "pulling") is None)


async def test_oom_kill_evict_and_kill_hooks(
    fake_core_v1: CoreV1Api, fake_kubelet: FakeKubelet
) -> None:
    for name in ("oom", "evicted", "killed"):
        await fake_core_v1.create_namespaced_pod(NS, agent_pod(name))
    for name in ("oom", "evicted", "killed"):
        await wait_pod(fake_core_v1, name, is_ready)
    fake_kubelet.oom_kill("oom")
    fake_kubelet.evict("evicted")
    fake_kubelet.kill("killed", signal.SIGKILL)
    failed = phase_is("Failed")
    oom = (await wait_pod(fake_core_v1, "oom", failed)).status.container_statuses[0]
    assert oom.state.terminated.reason == "OOMKilled"
    assert oom.state.terminated.exit_code == 137
    evicted = await wait_pod(fake_core_v1, "evicted", failed)
    assert evicted.status.reason == "Evicted"
    assert condition(evicted, "DisruptionTarget")
    killed = (await wait_pod(fake_core_v1, "killed", failed)).status.container_statuses[0]
    assert killed.state.terminated.exit_code == 137
    assert killed.state.terminated.reason == "Error"


async def test_active_deadline_exceeded(fake_core_v1: CoreV1Api, fake_kubelet: FakeKubelet) -> None:
    await fake_core_v1.create_namespaced_pod(NS, agent_pod("slow", activeDeadlineSeconds=1))
    pod = await wait_pod(fake_core_v1, "slow", phase_is("Failed"))
    assert pod.status.reason == "DeadlineExceeded"


async def test_restart_policy_other_than_never_is_refused(
    fake_core_v1: CoreV1Api, fake_kubelet: FakeKubelet
) -> None:
    body = script_pod("always", "pass")
    body["spec"]["restartPolicy"] = "Always"
    await fake_core_v1.create_namespaced_pod(NS, body)
    pod = await wait_pod(fake_core_v1, "always", phase_is("Failed"))
    assert pod.status.reason == "UnsupportedRestartPolicy"


async def test_no_processes_left_behind(fake_api: FakeApiServer, fake_core_v1: CoreV1Api) -> None:
    env = [{"name": "SPAWN_CHILD", "value": "1"}]
    async with FakeKubelet(fake_api) as kubelet:
        await fake_core_v1.create_namespaced_pod(NS, agent_pod("parent", env=env))
        await fake_core_v1.create_namespaced_pod(NS, agent_pod("plain"))
        await wait_pod(fake_core_v1, "parent", is_ready)
        await wait_pod(fake_core_v1, "plain", is_ready)
        pids = list(kubelet.processes.values())
        child = int(kubelet.read_log("parent").split("child ", 1)[1].split()[0])
        assert all(running(p) for p in [*pids, child])
    assert kubelet.processes == {}
    assert not any(running(p) for p in [*pids, child])


async def test_command_map_maps_image_and_leading_word(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    body = script_pod("mapped", "unused")
    body["spec"]["containers"][0]["command"] = ["/usr/bin/fake-agent", "raise SystemExit(7)"]
    command_map = {"/usr/bin/fake-agent": [sys.executable, "-c"]}
    async with FakeKubelet(fake_api, command_map=command_map):
        await fake_core_v1.create_namespaced_pod(NS, body)
        pod = await wait_pod(fake_core_v1, "mapped", phase_is("Failed"))
    assert pod.status.container_statuses[0].state.terminated.exit_code == 7
    assert os.path.exists(sys.executable)


async def test_sigterm_ignoring_process_is_killed_after_capped_grace(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\n"
        "time.sleep(120)\n"
    )
    async with FakeKubelet(fake_api, max_grace=0.3) as kubelet:
        await fake_core_v1.create_namespaced_pod(NS, script_pod("stubborn", code))
        await wait_pod(fake_core_v1, "stubborn", is_ready)  # no probe: Ready once started
        pid = kubelet.processes["stubborn"]
        await fake_core_v1.delete_namespaced_pod("stubborn", NS, grace_period_seconds=30)
        await fake_api.wait_until(lambda: fake_api.get_pod(NS, "stubborn") is None)
        await kubelet.wait_for_exit("stubborn")
        assert not running(pid)
