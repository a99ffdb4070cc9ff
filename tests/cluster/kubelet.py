"""A kubelet stand-in for a real API server, using only the public API, as a node would.

As the scheduler (no kube-scheduler runs) it binds pending pods that match its label
selector to its node through the Binding subresource. As the node ``system:node:<name>``
(so the Node authorizer and the NodeRestriction admission plugin judge it) it registers
its Node, runs each pod bound to it as a local process (the first container, with the env
and mounts the pod spec gives: see :mod:`fakekube.podspec`), reports ``Running`` and
``Ready`` with a loopback pod IP of its own through the status subresource, probes
readiness as the spec says (Ready turns False when the agent stops answering, and back),
and when the pod is deleted stops the process (SIGTERM, SIGKILL after the grace period)
and removes the pod, as a kubelet does.

A ``readOnly`` volume mount is read-only for the pod's process, as a kubelet makes it: the
process runs in a mount namespace of its own (util-linux ``unshare``, as root) in which the
mount's local folder is bind-mounted read-only over itself, so a write there fails with
EROFS while others (poold) still write to the folder.

What it cannot be: there are no containers, images, network namespaces or cgroups. Every
pod shares the host's network, so an env value ``0.0.0.0`` (listen on all of the pod's
addresses) becomes the pod's own IP; resource limits and securityContext are admitted by
the API server but not enforced here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from poold.backends.kubernetes import reading
from tests.fakekube.podspec import ConfigError, Mount, Unschedulable, plan_launch

log = logging.getLogger(__name__)

Obj = dict[str, Any]
_ips = itertools.count()


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


BIND_READ_ONLY = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do '
    'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 126; '
    'shift; n=$((n - 1)); done; exec "$@"'
)
"""``sh -c`` in the pod's mount namespace: ``N folder... argv...``: bind each folder
read-only over itself, then become the pod's process (same pid: no extra parent)."""


def read_only_argv(argv: list[str], mounts: list[Mount]) -> list[str]:
    """``argv`` run so that the pod's ``readOnly`` mounts are read-only for it."""
    folders = [str(m.local) for m in mounts if m.read_only]
    if not folders:
        return argv
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", BIND_READ_ONLY,
            "sh", str(len(folders)), *folders, *argv]


def read_only_unavailable() -> str | None:
    """Why this machine does not let the stand-in make a mount read-only (pods with a
    ``readOnly`` mount would fail to start), or None when it does."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            done = subprocess.run(read_only_argv(["true"], [Mount("/x", Path(folder), True)]),
                                  capture_output=True, text=True, timeout=30, check=False)
        except FileNotFoundError as e:
            return f"the kubelet stand-in makes readOnly mounts with unshare, not found: {e}"
    if done.returncode != 0:
        return ("the kubelet stand-in makes readOnly mounts read-only in a mount namespace "
                f"(unshare --mount, as root), which this machine refuses: {done.stderr.strip()}")
    return None


async def configuration(kubeconfig: Path) -> Configuration:
    config = Configuration()
    await kube_config.load_kube_config(config_file=str(kubeconfig), client_configuration=config,
                                       persist_config=False)
    return config


class Pod:
    """One pod this node runs: its process, its probe, its status."""

    def __init__(self, kubelet: KubeletStandIn, pod: Obj) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.uid: str = meta["uid"]
        n = next(_ips)
        self.ip = f"127.0.{20 + n // 250}.{1 + n % 250}"
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = False
        self.deleting = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.started_at = now()
        self.log_path = kubelet.workdir / "logs" / f"{self.name}.log"

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            self._kill(signal.SIGKILL)
            raise
        except Exception:
            log.exception("kubelet stand-in: pod %s failed", self.name)

    async def _run(self) -> None:
        if self.kubelet.hollow:  # bench: Running and Ready at once, nothing runs
            self.ready = True
            await self._status(self._running_status())
            await self.deleting.wait()
            await self._remove()
            return
        try:
            plan = plan_launch(
                self.pod, pod_ip=self.ip, service_env={}, base_env=self.kubelet.base_env,
                pvc_paths=self.kubelet.pvc_paths,
                scratch=self.kubelet.workdir / "pods" / self.uid,
                command_map=None,
            )
        except (ConfigError, Unschedulable) as e:
            await self._status({"phase": "Pending", "conditions": [
                _condition("Ready", False, "ContainersNotReady", str(e))]})
            await self.deleting.wait()
            await self._remove()
            return
        env = {k: (self.ip if v == "0.0.0.0" else v) for k, v in plan.env.items()}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *read_only_argv(plan.argv, plan.mounts), env=env, cwd=plan.cwd, stdout=out,
                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        await self._status(self._running_status())
        probe = asyncio.create_task(self._probe_loop())
        exited = asyncio.create_task(self.proc.wait())
        deleting = asyncio.create_task(self.deleting.wait())
        await asyncio.wait({exited, deleting}, return_when=asyncio.FIRST_COMPLETED)
        probe.cancel()
        if deleting.done():
            grace = min(self.kubelet.max_grace, float(
                self.pod["metadata"].get("deletionGracePeriodSeconds") or 0))
            self._kill(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), grace)
            except TimeoutError:
                self._kill(signal.SIGKILL)
            await exited
            await self._remove()
            return
        deleting.cancel()
        code = self.proc.returncode or 0
        await self._status(self._finished_status(code))
        await self.deleting.wait()
        await self._remove()

    def _kill(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    async def _probe_loop(self) -> None:
        container = self.pod["spec"]["containers"][0]
        probe = container.get("readinessProbe") or {}
        period = min(float(probe.get("periodSeconds", 10)), self.kubelet.max_probe_period)
        while True:
            ok = await self._probe(container, probe)
            if ok != self.ready:
                self.ready = ok
                await self._status(self._running_status())
            await asyncio.sleep(period)

    async def _probe(self, container: Obj, probe: Obj) -> bool:
        http = probe.get("httpGet")
        if not http:
            return True
        port = http.get("port")
        if isinstance(port, str) and not port.isdigit():
            port = next((p["containerPort"] for p in container.get("ports") or []
                         if p.get("name") == port), 0)
        timeout = aiohttp.ClientTimeout(total=float(probe.get("timeoutSeconds", 1)))
        headers = {h["name"]: h["value"] for h in http.get("httpHeaders") or []}
        try:
            async with self.kubelet.http.get(
                    f"http://{self.ip}:{port}{http.get('path', '/')}", headers=headers,
                    timeout=timeout) as r:
                return 200 <= r.status < 400
        except (OSError, TimeoutError, aiohttp.ClientError):
            return False

    def _running_status(self) -> Obj:
        ready = self.ready
        return {
            "phase": "Running", "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip, "podIPs": [{"ip": self.ip}], "startTime": self.started_at,
            "conditions": [
                _condition("PodScheduled", True), _condition("Initialized", True),
                _condition("ContainersReady", ready), _condition("Ready", ready),
            ],
            "containerStatuses": [self._container(
                {"running": {"startedAt": self.started_at}}, ready)],
        }

    def _finished_status(self, code: int) -> Obj:
        phase = "Succeeded" if code == 0 else "Failed"
        return {
            "phase": phase, "podIP": self.ip, "podIPs": [{"ip": self.ip}],
            "conditions": [_condition("Ready", False, "PodCompleted"),
                           _condition("ContainersReady", False, "PodCompleted")],
            "containerStatuses": [self._container({"terminated": {
                "exitCode": code, "reason": "Completed" if code == 0 else "Error",
                "startedAt": self.started_at, "finishedAt": now()}}, False)],
        }

    def _container(self, state: Obj, ready: bool) -> Obj:
        container = self.pod["spec"]["containers"][0]
        return {"name": container["name"], "image": container.get("image", ""),
                "imageID": "", "ready": ready, "restartCount": 0, "started": True,
                "state": state}

    async def _status(self, status: Obj) -> None:
        if self.deleting.is_set():
            return
        try:
            await self.kubelet.core.patch_namespaced_pod_status(
                self.name, self.namespace, {"status": status},
                _content_type="application/merge-patch+json", _request_timeout=10)
        except Exception as e:
            if getattr(e, "status", None) != 404:
                log.warning("kubelet stand-in: cannot write status of %s: %r", self.name, e)

    async def _remove(self) -> None:
        try:
            # with a body, the server reads the options from it alone: a gracePeriodSeconds
            # in the query would be ignored, and the pod left terminating for good
            await self.kubelet.core.delete_namespaced_pod(
                self.name, self.namespace,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                _request_timeout=10)
        except Exception as e:
            if getattr(e, "status", None) != 404:
                log.warning("kubelet stand-in: cannot remove pod %s: %r", self.name, e)
        self.kubelet.pods.pop(self.uid, None)
        self.kubelet._done.add(self.uid)


def _condition(kind: str, ok: bool, reason: str | None = None,
               message: str | None = None) -> Obj:
    found: Obj = {"type": kind, "status": "True" if ok else "False",
                  "lastTransitionTime": now()}
    if reason:
        found["reason"] = reason
    if message:
        found["message"] = message
    return found


class KubeletStandIn:
    """``async with KubeletStandIn(node=..., scheduler=..., ...)``: the two kubeconfigs
    are the node's and the scheduler's identities."""

    def __init__(
        self, *, node_kubeconfig: Path, scheduler_kubeconfig: Path, node_name: str,
        label_selector: str, pvc_paths: Mapping[str, Path], max_grace: float = 2.0,
        max_probe_period: float = 1.0, base_env: Mapping[str, str] | None = None,
        hollow: bool = False,
    ) -> None:
        """``hollow``: run nothing, report every pod Running and Ready at once (as
        kubemark's hollow nodes do), for scale runs where 300 agents would not fit."""
        self.hollow = hollow
        self.node_kubeconfig = node_kubeconfig
        self.scheduler_kubeconfig = scheduler_kubeconfig
        self.node_name = node_name
        self.selector = label_selector
        self.pvc_paths = dict(pvc_paths)
        self.max_grace = max_grace
        self.max_probe_period = max_probe_period
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.base_env.setdefault("PYTHONUNBUFFERED", "1")
        self.workdir = Path(tempfile.mkdtemp(prefix="kubelet-standin-"))
        self.pods: dict[str, Pod] = {}
        self._done: set[str] = set()
        """uids of pods this node has finished with: a late event never restarts one."""
        self._clients: list[ApiClient] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self.core: Any = None
        self._scheduler: Any = None

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None
        return self._http

    async def __aenter__(self) -> KubeletStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        node_client = ApiClient(configuration=await configuration(self.node_kubeconfig))
        sched_client = ApiClient(configuration=await configuration(self.scheduler_kubeconfig))
        self._clients = [node_client, sched_client]
        self.core = CoreV1Api(node_client)
        self._scheduler = CoreV1Api(sched_client)
        self._http = aiohttp.ClientSession()
        await self._register()
        self._tasks = [
            asyncio.create_task(self._watch(
                self._scheduler, "spec.nodeName=", self._bind), name="standin-scheduler"),
            asyncio.create_task(self._watch(
                self.core, f"spec.nodeName={self.node_name}", self._on_pod), name="standin-node"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        pods = list(self.pods.values())
        for pod in pods:
            if pod.task is not None:
                pod.task.cancel()
        await asyncio.gather(*(p.task for p in pods if p.task), return_exceptions=True)
        for pod in pods:
            if pod.proc is not None and pod.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.proc.pid, signal.SIGKILL)
                await pod.proc.wait()
        self.pods.clear()
        if self._http is not None:
            await self._http.close()
        for client in self._clients:
            await client.close()

    async def _register(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": self.node_name, "labels": {"kubernetes.io/hostname": self.node_name}}}
        try:
            await self.core.create_node(node, _request_timeout=10)
        except ApiException as e:
            if e.status != 409:  # 409: registered by an earlier run
                raise
        await self.core.patch_node_status(self.node_name, {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet stand-in", "lastHeartbeatTime": now(),
                            "lastTransitionTime": now()}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
        }}, _content_type="application/merge-patch+json", _request_timeout=10)

    async def _watch(self, api: Any, field_selector: str, handle: Any) -> None:
        """List, then watch from the list's version; on any end or error, list again."""
        while True:
            try:
                listed = await api.list_pod_for_all_namespaces(
                    field_selector=field_selector, label_selector=self.selector,
                    _preload_content=False, _request_timeout=30)
                async with listed:
                    data = json.loads(await listed.text())
                for pod in data.get("items", []):
                    await handle("ADDED", pod)
                rv = data["metadata"]["resourceVersion"]
                response = await api.list_pod_for_all_namespaces(
                    field_selector=field_selector, label_selector=self.selector, watch=True,
                    resource_version=rv, timeout_seconds=60, allow_watch_bookmarks=True,
                    _preload_content=False, _request_timeout=90)
                async with reading(response):  # stop() aborts it: see reading()
                    async for line in response.content:
                        if line.strip():
                            event = json.loads(line)
                            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                                await handle(event["type"], event["object"])
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("kubelet stand-in watch (%s): %r", field_selector, e)
                await asyncio.sleep(0.5)

    async def _bind(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        if kind == "DELETED" or meta.get("deletionTimestamp") or pod["spec"].get("nodeName"):
            return
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                             "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        with contextlib.suppress(Exception):  # bound already (409), or gone
            await self._scheduler.create_namespaced_pod_binding(
                meta["name"], meta["namespace"], body, _request_timeout=10)

    async def _on_pod(self, kind: str, obj: Obj) -> None:
        uid = obj["metadata"]["uid"]
        pod = self.pods.get(uid)
        if pod is None:
            if (kind == "DELETED" or uid in self._done
                    or obj.get("status", {}).get("phase") in ("Succeeded", "Failed")):
                return
            pod = self.pods[uid] = Pod(self, obj)
            if obj["metadata"].get("deletionTimestamp"):
                pod.deleting.set()
            pod.task = asyncio.create_task(pod.run(), name=f"standin-{pod.name}")
            return
        pod.pod = obj
        if kind == "DELETED" or obj["metadata"].get("deletionTimestamp"):
            pod.deleting.set()

    def pid_of(self, name: str) -> int | None:
        for pod in self.pods.values():
            if pod.name == name and pod.proc is not None:
                return pod.proc.pid
        return None
