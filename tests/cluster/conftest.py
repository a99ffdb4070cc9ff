"""One real control plane for every test in this folder (session scope), deploy/overlays/dev
applied to it once, a kubelet stand-in per test, poold's ServiceAccount token on demand.

Without the binaries (no Go, or `make cluster-build` not run) every test here is skipped
with a reason saying how to enable it; with ``CI`` set they fail instead."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api

from .controlplane import HOW_TO_ENABLE, NODE, REPO, ControlPlane, built
from .kubelet import KubeletStandIn, configuration

NAMESPACE = "poold"
RUNNER = "app.kubernetes.io/name=poold-runner"
TEMPLATE = REPO / "deploy" / "runner" / "pod-template.yaml"


def kubectl_path() -> str:
    venv = REPO / ".venv" / "bin" / "kubectl"
    return str(venv) if venv.exists() else "kubectl"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    if not built():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-control-plane tests: {HOW_TO_ENABLE}")
        pytest.skip(HOW_TO_ENABLE)
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    plane.start()
    yield plane
    plane.stop()


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


@pytest.fixture(scope="session")
def applied(control_plane: ControlPlane) -> Applied:
    """deploy/overlays/prod, then (after deleting its namespace) deploy/overlays/dev, applied
    as written: both use the namespace poold, and prod's PVCs are larger than dev's, which a
    PersistentVolumeClaim that is not bound cannot be resized to. First the ServiceMonitor
    CRD their monitoring component needs, as docs/deploy.md installs it before poold."""
    kubectl(control_plane, "apply", "-f", str(Path(__file__).parent / "servicemonitor-crd.yaml"))
    kubectl(control_plane, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com")
    overlays = REPO / "deploy" / "overlays"
    prod = kubectl(control_plane, "apply", "-k", str(overlays / "prod"))
    kubectl(control_plane, "delete", "namespace", NAMESPACE, "--wait", "--timeout=120s")
    dev = kubectl(control_plane, "apply", "-k", str(overlays / "dev"))
    return Applied(prod=prod.stdout + prod.stderr, dev=dev.stdout + dev.stderr)


@pytest.fixture(scope="session")
def deployed(control_plane: ControlPlane, applied: Applied) -> ControlPlane:
    """The control plane with deploy/overlays/dev applied, its namespace ready for pods."""
    wait_for_default_account(control_plane, NAMESPACE)
    return control_plane


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


def service_account_kubeconfig(plane: ControlPlane, account: str, path: Path) -> Path:
    """A kubeconfig holding a TokenRequest token of ``poold/<account>``, context namespace
    unset (poold must find its namespace itself)."""
    result = kubectl(plane, "create", "token", account, "-n", NAMESPACE, "--duration=2h")
    return plane.kubeconfig(account, token=result.stdout.strip(), path=path)


@pytest.fixture
def poold_account(deployed: ControlPlane, tmp_path: Path) -> Account:
    return Account("poold", service_account_kubeconfig(deployed, "poold",
                                                       tmp_path / "poold.kubeconfig"))


@pytest.fixture
def pool_name() -> str:
    return "t" + secrets.token_hex(4)


@pytest.fixture
async def standin(
    deployed: ControlPlane, tmp_path: Path, pool_name: str
) -> AsyncIterator[KubeletStandIn]:
    (tmp_path / "slots").mkdir()
    async with KubeletStandIn(
        node_kubeconfig=deployed.kubeconfig("node"),
        scheduler_kubeconfig=deployed.kubeconfig("scheduler"),
        node_name=NODE, label_selector=f"{RUNNER},poold.dev/pool={pool_name}",
        pvc_paths={"poold-slots": tmp_path / "slots"},
    ) as kubelet:
        yield kubelet


@pytest.fixture
async def admin_core(deployed: ControlPlane) -> AsyncIterator[CoreV1Api]:
    async with ApiClient(configuration=await configuration(deployed.kubeconfig())) as client:
        yield CoreV1Api(client)


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
