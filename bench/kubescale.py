"""The scale scenario: poold's Kubernetes backend with 1,000 pods, no cluster.

Two processes:

- **this one** runs the in-repo fake API server (``tests/fakekube``) and an
  :class:`InstantKubelet`: for every pod created it writes what a scheduler
  and a kubelet would (bound to a node, then ``Running`` and ``Ready`` with an
  IP of its own) straight into the fake server's store. No process runs: two
  cores cannot run 1,000 agents, and what is measured here is poold's side.
- **a child** (``python -m bench.kubedaemon``) runs poold's real
  ``KubernetesBackend`` and ``Pool`` against that server over HTTP, fills the
  pool, idles, makes the claims and reports its own CPU time and memory.

So the figures are poold's cost of keeping 1,000 pods (list + watch of every
pod, the pool's bookkeeping) and the latency of a fenced claim through a
real HTTP client against an API server that answers in Python on the same
machine. A real cluster adds network round trips, etcd writes and a real
kubelet's start-up time (image pull, container start, readiness probe),
none of which is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fixtures import REPO
from .scenario import KubeScale
from .stats import percentile

TEMPLATE = REPO / "deploy" / "runner" / "pod-template.yaml"
HISTORY = 50_000
"""Watch history the fake server keeps: enough that the daemon's watch never expires."""


def _fakekube() -> Any:
    """``tests/fakekube`` (the bench runs from the repository root, as ``python -m bench``;
    imported by name so that mypy does not check the tests as the bench)."""
    return importlib.import_module("tests.fakekube")


class InstantKubelet:
    """Marks every new pod of the fake API server scheduled, then Running and Ready
    with a unique 127.x.y.z IP, without starting anything; finishes deletions at
    once. Two writes per pod (bind, then status), as a scheduler and a kubelet
    would make, so the daemon's watch sees the usual ADDED, MODIFIED, MODIFIED."""

    def __init__(self, api: Any, node: str = "bench-instant-node") -> None:
        _fakekube()
        self.api = api
        self.node = node
        self._pods = importlib.import_module("tests.fakekube.resources").PODS
        self._status = importlib.import_module("tests.fakekube.status")
        self._ips = itertools.count()
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self.readied = 0
        self.removed = 0

    def _ip(self) -> str:
        n = next(self._ips)
        return f"127.{1 + n // 65024 % 254}.{n // 254 % 256}.{1 + n % 254}"

    def _bind(self, pod: dict[str, Any]) -> None:
        pod.setdefault("spec", {})["nodeName"] = self.node
        status = pod.setdefault("status", {})
        status["phase"] = "Pending"
        self._status.set_condition(status, "PodScheduled", True)

    def _ready(self, ip: str) -> Any:
        status = self._status
        store = importlib.import_module("tests.fakekube.store")

        def apply(pod: dict[str, Any]) -> None:
            now = store.rfc3339()
            st = pod.setdefault("status", {})
            st.update(phase="Running", podIP=ip, podIPs=[{"ip": ip}], hostIP="127.0.0.1",
                      startTime=now)
            status.set_condition(st, "Initialized", True)
            st["containerStatuses"] = [
                status.container_status(pod, status.running(now), ready=True)]
            status.set_ready(pod, True)

        return apply

    def _handle(self, change: Any) -> None:
        if change.rt != self._pods or change.type == "DELETED":
            return
        pod = change.obj
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        store = self.api.store
        if meta.get("deletionTimestamp"):
            if store.remove(self._pods, ns, name, uid=uid):
                self.removed += 1
            return
        if change.type != "ADDED" or (pod.get("spec") or {}).get("nodeName"):
            return
        store.mutate(self._pods, ns, name, self._bind, uid=uid)
        if store.mutate(self._pods, ns, name, self._ready(self._ip()), uid=uid) is not None:
            self.readied += 1

    async def _loop(self) -> None:
        change_type = importlib.import_module("tests.fakekube.store").Change
        while True:
            item = await self._sub.queue.get()
            if item is None:
                return
            if isinstance(item, change_type):
                self._handle(item)

    async def __aenter__(self) -> InstantKubelet:
        self._sub = self.api.store.subscribe(self._pods)
        self._task = asyncio.create_task(self._loop(), name="instant-kubelet")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            self._sub.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class KubeRun:
    scale: KubeScale
    result: dict[str, Any] = field(default_factory=dict)
    """What the daemon process measured (see ``bench/kubedaemon.py``)."""
    server_cpu_s: float | None = None
    """CPU time of this process (fake API server + instant kubelet) during the run."""
    api_requests: dict[str, int] = field(default_factory=dict)
    pods_readied: int = 0
    wall_s: float = 0.0
    failure: str | None = None
    skipped: str | None = None
    """Why it did not run (the real control plane is not built): not a failure."""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_kube_scale(scale: KubeScale, logs_dir: Path, *, deadline: float | None = None
                         ) -> KubeRun:
    """Run the scale scenario; never raises for trouble in it (``failure`` is set).
    ``deadline`` (perf_counter) shortens the daemon's time limit to the run's budget."""
    run = KubeRun(scale)
    began = time.monotonic()
    print(f"{scale.name}: {scale.api} API server, {scale.pods} pods, {scale.claims} claims ...",
          file=sys.stderr, flush=True)
    try:
        if scale.api == "real":
            await _real(scale, run, logs_dir, deadline)
            return _finish(run, began)
        fk = _fakekube()
        async with fk.FakeApiServer(history=HISTORY) as api, InstantKubelet(api) as kubelet:
            with tempfile.TemporaryDirectory(prefix="poold-bench-kube-") as tmp:
                out = Path(tmp) / "result.json"
                cpu = _cpu()
                timeout = scale.timeout_s
                if deadline is not None:
                    timeout = max(10.0, min(timeout, (deadline - time.perf_counter()) / 2))
                await _daemon(scale, api.url, Path(tmp), out, logs_dir, limit_s=timeout)
                run.server_cpu_s = round(_cpu() - cpu, 3)
                run.api_requests = dict(api.verb_counts)
                run.pods_readied = kubelet.readied
                run.result = json.loads(out.read_text(encoding="utf-8"))
        if "error" in run.result:
            run.failure = str(run.result["error"])
    except Exception as e:  # a broken scenario must not stop the others
        run.failure = f"{type(e).__name__}: {e}"
    return _finish(run, began)


def _percentiles(result: dict[str, Any]) -> None:
    """p50/p90/p99 of the claims the daemon process timed, by the bench's nearest rank
    (``bench.stats.percentile``), from the times as it wrote them."""
    for name in ("claim", "take_idle"):
        if f"{name}_ms" in result:
            for p in (50, 90, 99):
                result[f"{name}_p{p}_ms"] = percentile(result[f"{name}_ms"], p)


def _finish(run: KubeRun, began: float) -> KubeRun:
    scale = run.scale
    _percentiles(run.result)
    if "error" in run.result and not run.failure:
        run.failure = str(run.result["error"])
    if run.skipped:
        print(f"{scale.name}: skipped: {run.skipped}", file=sys.stderr, flush=True)
    elif run.failure:
        print(f"{scale.name}: FAILED: {run.failure}", file=sys.stderr, flush=True)
    else:
        r = run.result
        print(f"{scale.name}: filled {r['pods']} pods in {r['fill_s']:.1f} s; claim p50 "
              f"{r['claim_p50_ms']} ms", file=sys.stderr, flush=True)
    run.wall_s = time.monotonic() - began
    return run


def _proc_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of processes (the API server and etcd)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


async def _real(scale: KubeScale, run: KubeRun, logs_dir: Path, deadline: float | None) -> None:
    """The same daemon against a real kube-apiserver + etcd (tests/cluster), whose pods a
    hollow kubelet stand-in binds and marks Ready (two writes each, through the API)."""
    controlplane = importlib.import_module("tests.cluster.controlplane")
    kubelet_mod = importlib.import_module("tests.cluster.kubelet")
    if not controlplane.built():
        run.skipped = str(controlplane.HOW_TO_ENABLE)
        return
    with tempfile.TemporaryDirectory(prefix="poold-bench-kube-real-") as tmp:
        plane = controlplane.ControlPlane(Path(tmp) / "plane", controller_manager=True)
        await asyncio.to_thread(plane.start)
        try:
            admin = plane.kubeconfig("admin", namespace="poold")
            for args in (["create", "namespace", "poold"],
                         ["label", "namespace", "poold",
                          "pod-security.kubernetes.io/enforce=restricted"],
                         ["wait", "--for=create", "-n", "poold",
                          "serviceaccount/default", "--timeout=60s"]):
                env = {**os.environ, "KUBECONFIG": str(admin)}
                await asyncio.to_thread(subprocess.run, [_kubectl(), *args], env=env,
                                        check=True, capture_output=True, timeout=120)
            pids = [p.pid for p in plane.processes.values()]
            async with kubelet_mod.KubeletStandIn(
                node_kubeconfig=plane.kubeconfig("node"),
                scheduler_kubeconfig=plane.kubeconfig("scheduler"),
                node_name=controlplane.NODE, label_selector="app.kubernetes.io/name=poold-runner",
                pvc_paths={}, hollow=True,
            ) as kubelet:
                out = Path(tmp) / "result.json"
                cpu = _proc_cpu(pids)
                mine = _cpu()
                timeout = scale.timeout_s
                if deadline is not None:
                    timeout = max(10.0, min(timeout, (deadline - time.perf_counter()) / 2))
                await _daemon(scale, None, Path(tmp), out, logs_dir, limit_s=timeout,
                              kubeconfig=admin)
                run.server_cpu_s = round(_proc_cpu(pids) - cpu + _cpu() - mine, 3)
                run.pods_readied = sum(1 for _ in kubelet.pods.values())
                run.result = json.loads(out.read_text(encoding="utf-8"))
        finally:
            await asyncio.to_thread(plane.stop)


def _kubectl() -> str:
    venv = REPO / ".venv" / "bin" / "kubectl"
    return str(venv) if venv.exists() else "kubectl"


async def _daemon(scale: KubeScale, url: str | None, tmp: Path, out: Path, logs_dir: Path, *,
                  limit_s: float, kubeconfig: Path | None = None) -> None:
    slots = tmp / "slots"
    slots.mkdir()
    log = logs_dir / f"{scale.name}.daemon.log"
    with log.open("wb") as f:
        # the bench package from this checkout, whatever the working directory
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.kubedaemon",
            *(["--kubeconfig", str(kubeconfig)] if kubeconfig else ["--api", str(url)]),
            "--pods", str(scale.pods),
            "--claims", str(scale.claims), "--max-starting", str(scale.max_starting),
            "--idle-s", str(scale.idle_s), "--timeout", str(limit_s),
            "--template", str(TEMPLATE), "--slots", str(slots), "--out", str(out),
            stdin=asyncio.subprocess.DEVNULL, stdout=f, stderr=asyncio.subprocess.STDOUT,
            cwd=str(tmp), env={**os.environ, "PYTHONPATH": path},
        )
        try:
            async with asyncio.timeout(limit_s * 2 + 60):
                code = await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"the daemon process did not finish; see {log}") from None
    if not await asyncio.to_thread(out.exists):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"the daemon process exited with {code} and no result; {log}:\n"
                           f"{tail}")
