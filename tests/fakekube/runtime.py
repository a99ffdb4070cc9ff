"""One pod's life on the fake node: bind, start, probe, supervise, finish.

Each pod gets its own task so a slow graceful stop or a hung probe never
delays another pod, as on a real node.  The runtime only learns about the
pod from watch events (``update`` / ``removed``) and only writes through the
store, so a backend sees the same sequence of API changes it would see from a
real kubelet: bind, Pending with an IP, Running, Ready, and finally a
terminated container or removal after a graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from . import status as st
from .podspec import ConfigError, Mount, Unschedulable, plan_launch
from .resources import PODS, TERMINAL_PHASES
from .store import rfc3339

if TYPE_CHECKING:
    from .kubelet import FakeKubelet

log = logging.getLogger(__name__)

Obj = dict[str, Any]
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
EVICTED_MESSAGE = "The node was low on resource: memory. "


class PodRuntime:
    """The kubelet's state for one pod (identified by uid)."""

    def __init__(self, kubelet: FakeKubelet, pod: Obj) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.proc: asyncio.subprocess.Process | None = None
        self.pod_ip: str | None = None
        self.mounts: list[Mount] = []
        self.removed = False
        self.oom = False
        self.fail_reason: tuple[str, str] | None = None
        self.started_at: str | None = None
        self._started_mono: float | None = None
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    # -- inputs ------------------------------------------------------------

    def update(self, pod: Obj) -> None:
        """A newer snapshot arrived from the watch."""
        if int(pod["metadata"]["resourceVersion"]) > int(self.pod["metadata"]["resourceVersion"]):
            self.pod = pod
        self._wake.set()

    def on_removed(self) -> None:
        """The object is gone (grace 0 or forced): kill at once, write nothing."""
        self.removed = True
        self._wake.set()

    @property
    def deleting(self) -> bool:
        """Whether a graceful deletion was requested."""
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    @property
    def pid(self) -> int | None:
        """The container process id while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the container's main process (like ``kill`` in it)."""
        if self.pid is None:
            raise ProcessLookupError(f"pod {self.name} has no running process")
        os.kill(self.pid, sig)

    def kill_group(self) -> None:
        """SIGKILL the whole process group, leftovers included."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def wake(self) -> None:
        """Make the supervisor re-check its state."""
        self._wake.set()

    # -- lifecycle ---------------------------------------------------------

    async def run(self) -> None:
        """Drive the pod to completion; never raises (errors are logged)."""
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "fakekube kubelet: pod %s/%s crashed the runtime", self.namespace, self.name
            )
        finally:
            self.kill_group()
            if self.proc is not None and self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    await self.proc.wait()
            self._forget_pid()

    def _forget_pid(self) -> None:
        procs = self.kubelet.processes
        if self.proc is not None and procs.get(self.name) == self.proc.pid:
            del procs[self.name]

    def _write(self, fn: Callable[[Obj], None]) -> bool:
        result = self.kubelet.api.store.mutate(PODS, self.namespace, self.name, fn, uid=self.uid)
        if result is None:
            self.removed = True
            return False
        self.pod = result
        return True

    async def _run(self) -> None:
        k = self.kubelet
        self.pod_ip = k.allocate_ip()
        config_error: ConfigError | None = None
        try:
            plan = plan_launch(
                self.pod,
                pod_ip=self.pod_ip,
                service_env=k.service_env(self.name),
                base_env=k.base_env,
                pvc_paths=k.pvc_paths,
                scratch=k.scratch_dir(self.uid),
                command_map=k.command_map,
            )
            self.mounts = plan.mounts
        except Unschedulable as exc:
            reason = str(exc)
            self._write(
                lambda p: st.set_condition(
                    p["status"], "PodScheduled", False, "Unschedulable", reason
                )
            )
            await self._until_deleted()
            return
        except ConfigError as exc:
            config_error = exc
        if not self._write(self._bind):
            return
        if self.pod["spec"].get("restartPolicy") != "Never":
            policy = self.pod["spec"].get("restartPolicy")
            self._write(
                lambda p: _fail(
                    p,
                    "UnsupportedRestartPolicy",
                    f"fakekube runs restartPolicy Never only, got {policy}",
                )
            )
            return
        pending = k.pending_forever_reason(self.pod)
        if pending is not None or config_error is not None:
            reason, message = pending or ("CreateContainerConfigError", str(config_error))
            self._write(lambda p: _set_container(p, st.waiting(reason, message)))
            await self._until_deleted()
            return
        log_file = k.log_path(self.name).open("ab")
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *plan.argv,
                env=plan.env,
                cwd=plan.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        )
        try:
            # Shielded: a kubelet shutting down mid-spawn must still learn the
            # pid, or the process would outlive the test.
            self.proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self.proc = await spawn
            raise
        except OSError as exc:
            message = f"failed to start {plan.argv[0]!r}: {exc}"
            self._write(lambda p: _start_failed(p, message))
            return
        finally:
            log_file.close()
        k.processes[self.name] = self.proc.pid
        self.started_at = rfc3339()
        self._started_mono = asyncio.get_running_loop().time()
        self._write(self._running)
        probe = asyncio.create_task(self._readiness_loop())
        try:
            returncode = await self._supervise(self.proc)
        finally:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
            self.kill_group()
            self._forget_pid()
        if self.removed:
            return
        if self._write(lambda p: self._finished(p, returncode)) and self.deleting:
            k.api.store.remove(PODS, self.namespace, self.name, uid=self.uid)

    async def _until_deleted(self) -> None:
        """Idle until the pod is deleted; then finish the deletion."""
        while not self.removed:
            if self.deleting:
                self.kubelet.api.store.remove(PODS, self.namespace, self.name, uid=self.uid)
                return
            await self._wake.wait()
            self._wake.clear()

    async def _supervise(self, proc: asyncio.subprocess.Process) -> int:
        loop = asyncio.get_running_loop()
        exited = asyncio.create_task(proc.wait())
        term_deadline: float | None = None
        term_started: float | None = None
        while not exited.done():
            timeouts = []
            if term_deadline is not None:
                timeouts.append(term_deadline - loop.time())
            active = self.pod["spec"].get("activeDeadlineSeconds")
            if active is not None and self.fail_reason is None and self._started_mono is not None:
                timeouts.append(self._started_mono + float(active) - loop.time())
            woken = asyncio.create_task(self._wake.wait())
            await asyncio.wait(
                {exited, woken},
                timeout=max(0.0, min(timeouts)) if timeouts else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            woken.cancel()
            self._wake.clear()
            if exited.done():
                break
            now = loop.time()
            if self.removed:
                self.kill_group()
            elif self.deleting:
                grace = float(self.pod["metadata"].get("deletionGracePeriodSeconds") or 0)
                grace = min(grace, self.kubelet.max_grace)
                if term_started is None:
                    term_started = now
                    if grace > 0:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(proc.pid, signal.SIGTERM)
                # A second delete may shorten the grace period.
                deadline = term_started + grace
                term_deadline = deadline if term_deadline is None else min(term_deadline, deadline)
            if term_deadline is not None and now >= term_deadline:
                self.kill_group()
            if (
                active is not None
                and self.fail_reason is None
                and self._started_mono is not None
                and now >= self._started_mono + float(active)
            ):
                self.fail_reason = ("DeadlineExceeded", DEADLINE_MESSAGE)
                self.kill_group()
        return await exited

    async def _readiness_loop(self) -> None:
        """Probe like the kubelet (thresholds included); write only on change."""
        container = self.pod["spec"]["containers"][0]
        probe = container.get("readinessProbe") or {}
        success_threshold = int(probe.get("successThreshold", 1))
        failure_threshold = int(probe.get("failureThreshold", 3))
        probe_ready = not probe
        ready = False
        successes = failures = 0
        while True:
            if probe:
                if await self._probe_once(container, probe):
                    successes, failures = successes + 1, 0
                    if successes >= success_threshold:
                        probe_ready = True
                else:
                    successes, failures = 0, failures + 1
                    if failures >= failure_threshold or not probe_ready:
                        probe_ready = False
            want = probe_ready and not self.kubelet.is_never_ready(self.pod)
            if want != ready and self._write(_readiness_setter(want)):
                ready = want
            await asyncio.sleep(self.kubelet.probe_interval)

    async def _probe_once(self, container: Obj, probe: Obj) -> bool:
        timeout = min(float(probe.get("timeoutSeconds", 1)), 1.0)
        try:
            if "httpGet" in probe:
                http = probe["httpGet"]
                port = _resolve_port(container, http.get("port"))
                url = f"http://{self.pod_ip}:{port}{http.get('path', '/')}"
                client_timeout = aiohttp.ClientTimeout(total=timeout)
                headers = {h["name"]: h["value"] for h in http.get("httpHeaders", [])}
                async with self.kubelet.http.get(
                    url, timeout=client_timeout, allow_redirects=False, headers=headers
                ) as resp:
                    return 200 <= resp.status < 400
            if "tcpSocket" in probe:
                port = _resolve_port(container, probe["tcpSocket"].get("port"))
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.pod_ip, port), timeout
                )
                writer.close()
                return True
        except (OSError, TimeoutError, aiohttp.ClientError, ValueError):
            return False
        return True  # exec probes are not run: treated as passing

    # -- status mutations --------------------------------------------------

    def _bind(self, pod: Obj) -> None:
        pod["spec"]["nodeName"] = self.kubelet.node_name
        status = pod.setdefault("status", {})
        st.set_condition(status, "PodScheduled", True)
        status.update(
            phase="Pending",
            hostIP=self.kubelet.host_ip,
            hostIPs=[{"ip": self.kubelet.host_ip}],
            podIP=self.pod_ip,
            podIPs=[{"ip": self.pod_ip}],
            startTime=rfc3339(),
        )
        st.set_condition(status, "Initialized", True)
        st.set_ready(pod, False)
        _set_container(pod, st.waiting("ContainerCreating"))

    def _running(self, pod: Obj) -> None:
        assert self.started_at is not None
        pod["status"]["phase"] = "Running"
        pod["status"]["containerStatuses"] = [
            st.container_status(pod, st.running(self.started_at), pid=self.pid)
        ]
        st.set_ready(pod, False)

    def _finished(self, pod: Obj, returncode: int) -> None:
        exit_code = returncode if returncode >= 0 else 128 - returncode
        if self.oom:
            exit_code, reason = 137, "OOMKilled"
        else:
            reason = "Completed" if exit_code == 0 else "Error"
        failed = exit_code != 0 or self.fail_reason is not None
        status = pod["status"]
        status["phase"] = "Failed" if failed else "Succeeded"
        pid = self.proc.pid if self.proc is not None else None
        state = st.terminated(exit_code, reason, self.started_at, pid)
        status["containerStatuses"] = [st.container_status(pod, state, pid=pid)]
        st.set_ready(pod, False, "PodCompleted")
        if self.fail_reason is not None:
            status["reason"], status["message"] = self.fail_reason
            if self.fail_reason[0] == "Evicted":
                st.set_condition(
                    status, "DisruptionTarget", True, "TerminationByKubelet", EVICTED_MESSAGE
                )


def _readiness_setter(ready: bool) -> Callable[[Obj], None]:
    def apply(pod: Obj) -> None:
        st.set_ready(pod, ready)

    return apply


def _set_container(pod: Obj, state: Obj) -> None:
    pod["status"]["containerStatuses"] = [st.container_status(pod, state)]


def _fail(pod: Obj, reason: str, message: str) -> None:
    pod["status"].update(phase="Failed", reason=reason, message=message)
    _set_container(pod, st.waiting(reason, message))


def _start_failed(pod: Obj, message: str) -> None:
    pod["status"]["phase"] = "Failed"
    pod["status"]["containerStatuses"] = [
        st.container_status(pod, st.terminated(128, "StartError", None, None))
    ]
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = message
    st.set_ready(pod, False, "PodCompleted")


def _resolve_port(container: Obj, port: Any) -> int:
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"unknown named port {port!r}")


def is_terminal(pod: Obj) -> bool:
    """Whether the pod has already finished."""
    return (pod.get("status") or {}).get("phase") in TERMINAL_PHASES
