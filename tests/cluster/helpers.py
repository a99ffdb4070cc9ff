"""What the tests of this folder share besides fixtures (those are in ``conftest.py``):
kubectl against the control plane, its runner pods, its audit log, poold's settings for it,
what a backend reports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from poold.backends.base import WorkerEvent
from poold.config import KubernetesSettings, Settings
from tests.support.daemon import make_settings

from .controlplane import REPO, ControlPlane

NAMESPACE = "poold"
RUNNER = "app.kubernetes.io/name=poold-runner"
TEMPLATE = REPO / "deploy" / "runner" / "pod-template.yaml"
RUNTIMES = KubernetesSettings().runtimes_mount_path
"""Where runner pods mount the runtimes poold publishes (kubernetes.runtimes_mount_path's
default): ``render(..., runtimes=RUNTIMES)`` adds that read-only mount of the slot volume."""


def kubectl_path() -> str:
    venv = REPO / ".venv" / "bin" / "kubectl"
    return str(venv) if venv.exists() else "kubectl"


def kubectl(plane: ControlPlane, *args: str, who: str = "admin",
            check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig(who))}
    result = subprocess.run([kubectl_path(), *args], env=env, capture_output=True, text=True,
                            check=False, timeout=120)
    if check:
        assert result.returncode == 0, (
            f"kubectl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class Applied:
    """What `kubectl apply -k` printed for each overlay."""

    prod: str
    dev: str


def wait_for_default_account(plane: ControlPlane, namespace: str) -> None:
    """Pods need their namespace's "default" ServiceAccount: the controller manager makes
    it; without one running, make it here as it would."""
    if "kube-controller-manager" in plane.processes:
        kubectl(plane, "wait", "--for=create", "-n", namespace,
                "serviceaccount/default", "--timeout=60s")
    else:
        kubectl(plane, "create", "serviceaccount", "default", "-n", namespace, check=False)


@dataclass
class Account:
    name: str
    kubeconfig: Path


def settings_for(tmp_path: Path, broker: str, account: Account, pool_name: str,
                 **overrides: Any) -> Settings:
    """poold's test settings (tests.support.daemon) on the Kubernetes backend, as poold's
    ServiceAccount, its runner pods owned by the Deployment deploy/ creates."""
    options: dict[str, Any] = {
        "pool__backend": "kubernetes",
        "kubernetes__kubeconfig": str(account.kubeconfig),
        "kubernetes__pod_template": str(TEMPLATE),
        "kubernetes__pool_name": pool_name,
        "kubernetes__lease_name": f"poold-leader-{pool_name}",
        "kubernetes__owner_deployment": "poold",
        "pool__start_timeout_s": "60",
    }
    options.update(overrides)
    return make_settings(tmp_path, broker, **options)


def service_account_kubeconfig(plane: ControlPlane, account: str, path: Path) -> Path:
    """A kubeconfig holding a TokenRequest token of ``poold/<account>``, context namespace
    unset (poold must find its namespace itself)."""
    result = kubectl(plane, "create", "token", account, "-n", NAMESPACE, "--duration=2h")
    return plane.kubeconfig(account, token=result.stdout.strip(), path=path)


async def akubectl(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    """:func:`kubectl` from a test's event loop, which must keep running meanwhile (the
    kubelet stand-in and poold live on it)."""
    return await asyncio.to_thread(kubectl, plane, *args)


async def pods_of(plane: ControlPlane, pool_name: str) -> set[str]:
    """Names of the runner pods of one pool, as kubectl lists them."""
    out = (await akubectl(plane, "get", "pods", "-n", NAMESPACE, "-l",
                          f"{RUNNER},poold.dev/pool={pool_name}", "-o", "name")).stdout
    return {line.removeprefix("pod/") for line in out.split()}


def audit_calls(plane: ControlPlane, user: str) -> list[dict[str, Any]]:
    """The audit log's entries for ``user`` (only poold's account is recorded)."""
    if not plane.audit_log.exists():
        return []
    entries = []
    for line in plane.audit_log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("user", {}).get("username") == user:
            entries.append(entry)
    return entries


class Events:
    """What a backend reported, with a way to wait for what is expected."""

    def __init__(self) -> None:
        self.seen: list[WorkerEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: WorkerEvent) -> None:
        self.seen.append(event)
        self._changed.set()

    async def wait(self, predicate: Callable[[], bool], timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def has(self, kind: str, pod: str) -> bool:
        return any(e.kind == kind and e.pod == pod for e in self.seen)


class MutingProxy:
    """A TCP relay in front of the API server that can go mute: after :meth:`mute`, what
    the server sends no longer reaches the client, as when the server is too loaded to
    answer or the network drops its packets. TLS passes through untouched (the server's
    certificate is for 127.0.0.1, as the relay is)."""

    def __init__(self, upstream: str) -> None:
        split = urlsplit(upstream)
        self._upstream = (split.hostname or "127.0.0.1", split.port or 443)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pumps: list[asyncio.Task[None]] = []
        self.muted = False
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def mute(self) -> None:
        self.muted = True

    async def __aenter__(self) -> MutingProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _relay(self, client_in: asyncio.StreamReader,
                     client_out: asyncio.StreamWriter) -> None:
        self._writers.append(client_out)
        server_in, server_out = await asyncio.open_connection(*self._upstream)
        self._writers.append(server_out)
        self._pumps += [asyncio.create_task(self._pump(client_in, server_out, mutes=False)),
                        asyncio.create_task(self._pump(server_in, client_out, mutes=True))]

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *,
                    mutes: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if not (mutes and self.muted):
                    dst.write(data)
                    await dst.drain()
            dst.close()


def connections_to(port: int) -> list[str]:
    """This process's open TCP connections to 127.0.0.1:``port`` (its sockets, from /proc:
    a socket this process has closed is no longer among its file descriptors)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.split(":")[1], 16) == port:
            found.append(f"local port {int(local.split(':')[1], 16)}")
    return found
