"""One real control plane for every test in this folder (session scope), deploy/overlays/dev
applied to it once, a kubelet stand-in per test, poold's ServiceAccount token on demand.

Without the binaries (no Go, or `make cluster-build` not run) every test here is skipped
with a reason saying how to enable it; with ``CI`` set they fail instead."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api

from tests.runtime.test_python import python_runtime  # noqa: F401 - a fixture

from .controlplane import HOW_TO_ENABLE, NODE, REPO, ControlPlane, built
from .helpers import (
    NAMESPACE,
    RUNNER,
    Account,
    Applied,
    kubectl,
    service_account_kubeconfig,
    wait_for_default_account,
)
from .kubelet import KubeletStandIn, configuration


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


