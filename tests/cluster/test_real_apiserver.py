"""poold against a real kube-apiserver (RBAC, Pod Security, etcd, its watch cache) with the
kubelet stand-in running runner pods as local agent processes: deploy/ applied as written,
poold with the identity of the ServiceAccount deploy/ creates, the backend's claims, watches
and leader election as a real server answers them."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from poold.backends.kubernetes import KubernetesBackend
from poold.backends.podtemplate import load_template, render
from poold.config import ConfigError, KubernetesSettings
from poold.daemon import Daemon
from poold.types import JobId, PodName
from tests.support.daemon import Client
from tests.support.wasm_fixtures import module

from .controlplane import REPO, ControlPlane
from .helpers import (
    NAMESPACE,
    RUNTIMES,
    TEMPLATE,
    Account,
    Applied,
    akubectl,
    audit_calls,
    kubectl,
    pods_of,
    settings_for,
)
from .kubelet import KubeletStandIn, configuration

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
async def daemon(
    standin: KubeletStandIn, poold_account: Account, tmp_path: Path, broker: str, pool_name: str,
) -> AsyncIterator[Daemon]:
    settings = settings_for(tmp_path, broker, poold_account, pool_name)
    daemon = Daemon(settings)
    try:
        await daemon.start()
        assert daemon.pool is not None
        await asyncio.wait_for(daemon.active.wait(), 60)
        pool = daemon.pool
        await pool.wait_until(lambda: pool.figures()["idle"] >= settings.pool.min_idle, 120)
        yield daemon
    finally:
        await daemon.stop()


# -- deploy/ as written -----------------------------------------------------------------


def test_both_overlays_apply_as_written(deployed: ControlPlane, applied: Applied) -> None:
    for overlay, output in (("prod", applied.prod), ("dev", applied.dev)):
        assert "deployment.apps/poold created" in output, output
        assert "role.rbac.authorization.k8s.io/poold created" in output, output
        assert "Warning" not in output, f"{overlay}: {output}"
    assert "resourcequota/poold-pods created" in applied.prod
    again = kubectl(deployed, "apply", "-k", str(REPO / "deploy" / "overlays" / "dev"))
    assert "deployment.apps/poold unchanged" in again.stdout, again.stdout


async def test_runner_pods_are_admitted_under_the_restricted_profile(
    deployed: ControlPlane, admin_core: Any, pool_name: str
) -> None:
    labels = await akubectl(deployed, "get", "namespace", NAMESPACE, "-o",
                     "jsonpath={.metadata.labels.pod-security\\.kubernetes\\.io/enforce}")
    assert labels.stdout == "restricted"
    pod = render(load_template(TEMPLATE), name=PodName(f"poold-w-{pool_name}aa"),
                 pool=pool_name, env={"POOLD_AGENT_KAFKA": "kafka:9092"})
    created = await admin_core.create_namespaced_pod(NAMESPACE, pod, dry_run="All")
    assert created.metadata.name == pod["metadata"]["name"]
    # the control: the same pod running as root is refused, so the profile is enforced
    loose = copy.deepcopy(pod)
    loose["spec"]["securityContext"].pop("runAsNonRoot")
    loose["spec"]["securityContext"]["runAsUser"] = 0
    with pytest.raises(ApiException) as refused:
        await admin_core.create_namespaced_pod(NAMESPACE, loose, dry_run="All")
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted' in json.loads(refused.value.body or "{}")["message"]


async def test_a_runner_pod_with_the_runtimes_mount_is_admitted_under_the_restricted_profile(
    deployed: ControlPlane, admin_core: Any, pool_name: str
) -> None:
    """What the profile judges here is the volume's type, not the mount: the runtimes
    are a subPath of the pod's own PersistentVolumeClaim (allowed), where shipping them
    on each node and mounting that folder (a hostPath volume) would be refused. Read-only
    is the mount's own flag, which admission keeps as written but does not require."""
    pod = render(load_template(TEMPLATE), name=PodName(f"poold-w-{pool_name}rt"),
                 pool=pool_name, env={"POOLD_AGENT_KAFKA": "kafka:9092"}, runtimes=RUNTIMES)
    created = await admin_core.create_namespaced_pod(NAMESPACE, pod, dry_run="All")
    agent = created.spec.containers[0]
    mounts = {m.mount_path: m for m in agent.volume_mounts}
    assert (mounts[RUNTIMES].name, mounts[RUNTIMES].sub_path,
            mounts[RUNTIMES].read_only) == ("slot", "runtimes", True)
    assert mounts["/slot"].name == "slot" and not mounts["/slot"].read_only
    [slot] = [v for v in created.spec.volumes if v.name == "slot"]
    assert slot.persistent_volume_claim.claim_name == "poold-slots"
    assert {e.name: e.value for e in agent.env}["POOLD_AGENT_RUNTIMES"] == RUNTIMES

    # the control: the same folder from the node's disk instead of the shared volume
    on_node = copy.deepcopy(pod)
    on_node["spec"]["volumes"].append({"name": "runtimes", "hostPath": {
        "path": "/var/lib/poold/runtimes", "type": "Directory"}})
    on_node["spec"]["containers"][0]["volumeMounts"] = [
        m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] != RUNTIMES
    ] + [{"name": "runtimes", "mountPath": RUNTIMES, "readOnly": True}]
    with pytest.raises(ApiException) as refused:
        await admin_core.create_namespaced_pod(NAMESPACE, on_node, dry_run="All")
    assert refused.value.status == 403
    message = json.loads(refused.value.body or "{}")["message"]
    assert 'violates PodSecurity "restricted' in message and "hostPath" in message, message


# -- poold as its ServiceAccount: a job end to end, and RBAC exactly what it uses -------------


def granted(plane: ControlPlane, account: str) -> set[tuple[str, str]]:
    """(resource, verb) rows of `kubectl auth can-i --list` for poold/<account>."""
    out = kubectl(plane, "auth", "can-i", "--list", "-n", NAMESPACE,
                  f"--as=system:serviceaccount:{NAMESPACE}:{account}").stdout
    rows = set()
    for line in out.splitlines()[1:]:
        parts = line.split()
        if not parts or parts[0].startswith("["):  # nonResourceURLs
            continue
        match = re.search(r"\[([^\]]*)\]\s*$", line)
        verbs = match.group(1).split() if match else []
        rows |= {(parts[0], verb) for verb in verbs}
    return rows


async def test_poold_runs_a_job_end_to_end_as_its_service_account(
    deployed: ControlPlane, daemon: Daemon, standin: KubeletStandIn, pool_name: str,
    poold_account: Account,
) -> None:
    pool = daemon.pool
    assert pool is not None
    before = await pods_of(deployed, pool_name)
    assert len(before) == 2
    async with aiohttp.ClientSession() as session:
        job = await Client(daemon, session, "alpha").run(module("upper"), input=["real", "api"])
        assert job["state"] == "succeeded", job
        assert job["warm"] is True and job["pod"] in before
        out = await Client(daemon, session, "alpha").text(f"/v1/jobs/{job['id']}/output")
        assert out.splitlines() == ["REAL", "API"]
    await pool.wait_until(lambda: job["pod"] not in pool.workers
                          and pool.figures()["idle"] == 2, 120)
    await akubectl(deployed, "wait", "--for=delete", f"pod/{job['pod']}", "-n", NAMESPACE,
            "--timeout=60s")  # the kubelet stand-in stopped its agent and removed it
    after = await pods_of(deployed, pool_name)
    assert job["pod"] not in after and len(after) == 2, "recycled and refilled"
    pod = await _read(deployed, sorted(after)[0])
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("Deployment", "poold")

    # two claimants on one pod: the loser's 409 makes it read the pod (pods get)
    backend = daemon.backend
    assert isinstance(backend, KubernetesBackend)
    other = KubernetesBackend(settings=backend.settings, template={}, kafka="unused")
    await other.start(lambda event: None)
    try:
        target = PodName(sorted(after)[0])
        assert target in other.pods  # start() lists before it returns
        results = await asyncio.gather(backend.claim(target, JobId("j-one")),
                                       other.claim(target, JobId("j-two")))
        assert sorted(results) == [False, True]
    finally:
        await other.stop()

    # every call poold made was allowed, and it was granted nothing it did not use
    user = f"system:serviceaccount:{NAMESPACE}:poold"

    def renewed(calls: list[dict[str, Any]]) -> bool:
        return any((c.get("objectRef") or {}).get("resource") == "leases"
                   and c["verb"] == "update" for c in calls)

    # the leader renews its Lease on its own schedule, not the test's: wait for a renewal
    # so the grant it needs (leases update) shows as used however fast the job ran
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not renewed(calls := audit_calls(deployed, user)):
        assert loop.time() < deadline, "poold never renewed its Lease within 60 s"
        await asyncio.sleep(0.5)
    refused = [c for c in calls if (c.get("responseStatus") or {}).get("code") == 403]
    assert not refused, refused
    used = set()
    for call in calls:
        ref = call.get("objectRef") or {}
        group = ref.get("apiGroup") or ""
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        used.add((f"{resource}.{group}" if group else resource, call["verb"]))
    baseline = await asyncio.to_thread(granted, deployed, "default")
    extra = await asyncio.to_thread(granted, deployed, "poold") - baseline
    assert extra == used, (
        f"granted but unused: {sorted(extra - used)}; used but not granted: {sorted(used - extra)}")


async def _read(plane: ControlPlane, name: str) -> dict[str, Any]:
    async with ApiClient(configuration=await configuration(plane.kubeconfig())) as client:
        core: Any = CoreV1Api(client)
        response = await core.read_namespaced_pod(name, NAMESPACE, _preload_content=False)
        async with response:
            data: dict[str, Any] = json.loads(await response.text())
            return data


async def test_runner_pods_are_collected_with_the_deployment_that_owns_them(
    deployed: ControlPlane, admin_core: Any, standin: KubeletStandIn, pool_name: str,
    poold_account: Account,
) -> None:
    """kubernetes.owner_deployment: deleting poold's Deployment deletes its runner pods
    (the controller manager's garbage collector, as in a real cluster)."""
    owner_name = f"owner-{pool_name}"
    await akubectl(deployed, "create", "deployment", owner_name, "-n", NAMESPACE,
                   "--image=registry.invalid/none:1", "--replicas=0")
    settings = KubernetesSettings(kubeconfig=poold_account.kubeconfig, pool_name=pool_name,
                                  owner_deployment=owner_name)
    backend = KubernetesBackend(settings=settings, template=load_template(TEMPLATE),
                                kafka="kafka:9092")
    try:
        with pytest.raises(ConfigError, match=r"kubernetes\.owner_deployment"):
            await backend.start(lambda event: None)  # the Role allows only "poold"
    finally:
        await backend.stop()
    admin = KubernetesBackend(settings=settings.model_copy(update={"kubeconfig": None}),
                              template=load_template(TEMPLATE), kafka="kafka:9092",
                              configuration=await configuration(deployed.kubeconfig()))
    await admin.start(lambda event: None)
    try:
        pod = PodName(f"poold-w-{pool_name}gc")
        await admin.create(pod)
        assert (await _read(deployed, pod))["metadata"]["ownerReferences"][0]["name"] == owner_name
    finally:
        await admin.stop()
    await akubectl(deployed, "delete", "deployment", owner_name, "-n", NAMESPACE)
    await akubectl(deployed, "wait", "--for=delete", f"pod/{pod}", "-n", NAMESPACE,
                   "--timeout=90s")
