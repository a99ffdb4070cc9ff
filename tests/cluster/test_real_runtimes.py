"""Operator runtimes (``[runtimes.<name>]``, docs/runtimes.md) on the Kubernetes backend with a
real kube-apiserver: runner pods that mount the runtimes poold publishes on the shared
volume read-only, run by the kubelet stand-in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from poold.backends.podtemplate import load_template, render
from poold.types import PodName

from .controlplane import ControlPlane
from .helpers import NAMESPACE, RUNTIMES_MOUNT, TEMPLATE, akubectl
from .kubelet import KubeletStandIn, read_only_unavailable

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
        pod = render(load_template(TEMPLATE), name=name, pool=pool_name, env={})
        container = pod["spec"]["containers"][0]
        container["volumeMounts"].append({**RUNTIMES_MOUNT, "readOnly": read_only})
        container["command"] = ["touch", f"/runtimes/{name}"]
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
