"""``FakeKubelet``: runs pods of a ``FakeApiServer`` as local processes.

It behaves like a single-node cluster's scheduler plus kubelet: it reacts to
pod writes seen through a watch on the server's store (not to direct calls),
binds each new pod to its node, gives it a unique loopback IP so many agents
can listen on the same port, runs the first container as a real process, and
reports status back through the API.  Tests steer failures through hooks
(``kill``, ``oom_kill``, ``evict``, ``set_never_ready``,
``set_pending_forever``) instead of reaching into the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from .podspec import CommandMap, Mount, default_base_env
from .resources import PODS
from .runtime import EVICTED_MESSAGE, PodRuntime, is_terminal
from .selectors import LabelSelector
from .server import FakeApiServer
from .store import Change, Subscription

log = logging.getLogger(__name__)

Obj = dict[str, Any]
PodPredicate = Callable[[Obj], bool]

# Process-wide so that two kubelets in one test never hand out the same IP.
_ip_counter = itertools.count()


class FakeKubelet:
    """Scheduler + kubelet for one fake node.

    ``command_map`` turns a container into a local argv: a callable
    ``(image, command + args) -> argv``, or a dict.  With a dict, a container
    that has a ``command`` has its first word replaced when that word (or,
    if it is not an existing local file, its basename) is a key; a container
    without ``command`` runs ``map[image] + args``, the image being looked up
    as given, without digest/tag, and by its last path segment.  Anything
    unmatched runs as written.  The default maps ``poold`` to
    ``[sys.executable, "-m", "poold"]``; dict entries are added to it.
    ``pvc_paths`` maps a PersistentVolumeClaim name to a local folder.
    ``namespace`` / ``label_selector`` restrict which pods this node runs.
    """

    def __init__(
        self,
        api: FakeApiServer,
        *,
        command_map: CommandMap | None = None,
        pvc_paths: Mapping[str, Path] | None = None,
        node_name: str = "fakekube-node",
        probe_interval: float = 0.05,
        max_grace: float = 2.0,
        log_dir: Path | None = None,
        base_env: Mapping[str, str] | None = None,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> None:
        self.api = api
        self.command_map = command_map
        self.pvc_paths = dict(pvc_paths or {})
        self.node_name = node_name
        self.host_ip = "127.0.0.1"
        self.probe_interval = probe_interval
        self.max_grace = max_grace
        self.base_env = dict(default_base_env() if base_env is None else base_env)
        self.base_env.setdefault("PYTHONUNBUFFERED", "1")
        self.namespace = namespace
        self._selector = LabelSelector(label_selector) if label_selector else None
        self.processes: dict[str, int] = {}
        self._runtimes: dict[str, PodRuntime] = {}  # by uid
        self._seen: set[str] = set()
        self._never_ready: PodPredicate | None = None
        self._pending_forever: tuple[PodPredicate, str, str] | None = None
        self._own_log_dir = log_dir is None
        self._tmp = Path(tempfile.mkdtemp(prefix="fakekube-"))
        self.log_dir = Path(log_dir) if log_dir is not None else self._tmp / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._sub: Subscription | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> FakeKubelet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Begin watching pods (existing ones are picked up too)."""
        self._http = aiohttp.ClientSession()
        self.api.log_reader = self._read_log_for_api
        # Subscribe before listing, in one synchronous step, so nothing is missed.
        self._sub = self.api.store.subscribe(PODS)
        for pod in self.api.store.select(PODS):
            self._consider(pod)
        self._loop_task = asyncio.create_task(self._watch_loop(self._sub))

    async def close(self) -> None:
        """Kill every process this kubelet started and wait for each to exit."""
        if self._sub is not None:
            self._sub.close()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
        runtimes = list(self._runtimes.values())
        for rt in runtimes:
            rt.kill_group()
            if rt.task is not None:
                rt.task.cancel()
        await asyncio.gather(
            *(rt.task for rt in runtimes if rt.task is not None), return_exceptions=True
        )
        for rt in runtimes:  # finish deletions the node can no longer complete
            pod = self.api.store.peek(PODS, rt.namespace, rt.name)
            if pod is not None and pod["metadata"].get("deletionTimestamp"):
                self.api.store.remove(PODS, rt.namespace, rt.name, uid=rt.uid)
        self._runtimes.clear()
        self.processes.clear()
        if self._http is not None:
            await self._http.close()
        if self.api.log_reader == self._read_log_for_api:
            self.api.log_reader = None
        if self._own_log_dir:
            shutil.rmtree(self._tmp, ignore_errors=True)
        else:
            shutil.rmtree(self._tmp / "pods", ignore_errors=True)

    async def _watch_loop(self, sub: Subscription) -> None:
        while True:
            item = await sub.queue.get()
            if item is None:
                return
            if isinstance(item, Change):
                try:
                    self._dispatch(item)
                except Exception:
                    log.exception("fakekube kubelet: failed to handle %s", item.type)

    def _dispatch(self, change: Change) -> None:
        if change.rt != PODS:
            return
        uid = change.obj["metadata"]["uid"]
        runtime = self._runtimes.get(uid)
        if change.type == "DELETED":
            self._seen.discard(uid)
            if runtime is not None:
                runtime.on_removed()
        elif runtime is not None:
            runtime.update(change.obj)
        else:
            self._consider(change.obj)

    def _consider(self, pod: Obj) -> None:
        meta = pod["metadata"]
        if meta["uid"] in self._seen:
            return
        node = (pod.get("spec") or {}).get("nodeName")
        if node and node != self.node_name:
            return
        if self.namespace is not None and meta["namespace"] != self.namespace:
            return
        if self._selector is not None and not self._selector.matches(meta.get("labels")):
            return
        self._seen.add(meta["uid"])
        if is_terminal(pod):
            return
        if meta.get("deletionTimestamp"):
            # Left terminating by a node that went away: nothing to stop here.
            self.api.store.remove(PODS, meta["namespace"], meta["name"], uid=meta["uid"])
            return
        runtime = PodRuntime(self, pod)
        self._runtimes[meta["uid"]] = runtime
        runtime.task = asyncio.create_task(self._run(runtime), name=f"fakekube-pod-{meta['name']}")

    async def _run(self, runtime: PodRuntime) -> None:
        try:
            await runtime.run()
        finally:
            self._runtimes.pop(runtime.uid, None)

    # -- helpers used by PodRuntime ----------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        """The session readiness probes use."""
        assert self._http is not None, "FakeKubelet is not started"
        return self._http

    @staticmethod
    def allocate_ip() -> str:
        """A fresh 127.0.x.y (x >= 10), never 127.0.0.1."""
        n = next(_ip_counter)
        return f"127.0.{10 + n // 254}.{1 + n % 254}"

    def service_env(self, pod_name: str) -> dict[str, str]:
        """What every container gets from the kubelet itself."""
        return {
            "HOSTNAME": pod_name,
            "KUBERNETES_SERVICE_HOST": self.api.host,
            "KUBERNETES_SERVICE_PORT": str(self.api.port),
        }

    def scratch_dir(self, uid: str) -> Path:
        """Per-pod folder backing emptyDir volumes."""
        path = self._tmp / "pods" / uid
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_never_ready(self, pod: Obj) -> bool:
        """Whether the never-ready hook applies to ``pod``."""
        return self._never_ready is not None and self._never_ready(pod)

    def pending_forever_reason(self, pod: Obj) -> tuple[str, str] | None:
        """The waiting reason/message if the pending-forever hook applies."""
        if self._pending_forever is None or not self._pending_forever[0](pod):
            return None
        return self._pending_forever[1], self._pending_forever[2]

    # -- public inspection -------------------------------------------------

    def log_path(self, pod_name: str) -> Path:
        """Where the pod's stdout+stderr go (appended across same-named pods)."""
        return self.log_dir / f"{pod_name}.log"

    def read_log(self, pod_name: str) -> str:
        """The pod's output so far ('' if it never started)."""
        path = self.log_path(pod_name)
        return path.read_text(errors="replace") if path.exists() else ""

    def _read_log_for_api(self, namespace: str, name: str) -> str | None:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else None

    def runtime(self, pod_name: str) -> PodRuntime:
        """The live runtime of a pod by name (KeyError if not on this node)."""
        for rt in self._runtimes.values():
            if rt.name == pod_name:
                return rt
        raise KeyError(pod_name)

    def pod_ip(self, pod_name: str) -> str | None:
        """The loopback IP given to a live pod."""
        return self.runtime(pod_name).pod_ip

    def mounts(self, pod_name: str) -> dict[str, Path]:
        """mountPath -> local folder for a live pod."""
        mounts: list[Mount] = self.runtime(pod_name).mounts
        return {m.mount_path: m.local for m in mounts}

    # -- test hooks --------------------------------------------------------

    def kill(self, pod_name: str, sig: int) -> None:
        """Send ``sig`` to the pod's main process; the exit is then reported."""
        self.runtime(pod_name).signal(sig)

    def oom_kill(self, pod_name: str) -> None:
        """SIGKILL the pod and report ``OOMKilled`` (exit code 137)."""
        rt = self.runtime(pod_name)
        rt.oom = True
        rt.kill_group()

    def evict(self, pod_name: str, message: str = EVICTED_MESSAGE) -> None:
        """Kill the pod and report phase Failed, reason ``Evicted``."""
        rt = self.runtime(pod_name)
        rt.fail_reason = ("Evicted", message)
        rt.kill_group()
        rt.wake()

    def set_never_ready(self, predicate: PodPredicate | None) -> None:
        """Pods matching ``predicate(pod)`` never become Ready (None: clear)."""
        self._never_ready = predicate

    def set_pending_forever(
        self,
        predicate: PodPredicate | None,
        reason: str = "ImagePullBackOff",
        message: str = "Back-off pulling image (fakekube)",
    ) -> None:
        """New pods matching ``predicate(pod)`` stay Pending with ``reason``."""
        self._pending_forever = None if predicate is None else (predicate, reason, message)

    async def wait_for_exit(self, pod_name: str, timeout: float = 10.0) -> None:
        """Wait until the named pod's runtime has finished (process reaped)."""
        with contextlib.suppress(KeyError):
            task = self.runtime(pod_name).task
            if task is not None:
                await asyncio.wait_for(asyncio.shield(task), timeout)
