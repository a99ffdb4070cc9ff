"""FakeApiServer CRUD semantics, exercised through kubernetes-asyncio's client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import (
    ApiClient,
    CoordinationV1Api,
    CoreV1Api,
    V1DeleteOptions,
    V1Preconditions,
)
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from .server import FakeApiServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

NS = "pool"
MERGE = "application/merge-patch+json"


def pod_body(name: str | None = None, labels: dict[str, str] | None = None, **meta: Any) -> Any:
    """A pod manifest as a plain dict (the client accepts dicts for bodies)."""
    metadata: dict[str, Any] = {"labels": labels or {}, **meta}
    if name:
        metadata["name"] = name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "agent", "image": "poold:dev", "command": ["poold"]}],
        },
    }


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body or b"{}")
    return body


async def test_create_generate_name_sets_metadata(fake_core_v1: CoreV1Api) -> None:
    pod = await fake_core_v1.create_namespaced_pod(NS, pod_body(generateName="warm-"))
    name = pod.metadata.name
    assert name.startswith("warm-")
    assert len(name) == len("warm-") + 5
    assert name[5:].isalnum()
    assert name[5:] == name[5:].lower()
    assert pod.metadata.namespace == NS
    assert pod.metadata.uid
    assert int(pod.metadata.resource_version) > 0
    assert pod.metadata.creation_timestamp is not None
    assert pod.status.phase == "Pending"
    assert pod.spec.termination_grace_period_seconds == 30  # server defaulting
    got = await fake_core_v1.read_namespaced_pod(name, NS)
    assert got.metadata.uid == pod.metadata.uid


async def test_generate_name_clash_is_already_exists(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    fake_api.store.name_suffix = lambda: "abcde"
    await fake_core_v1.create_namespaced_pod(NS, pod_body(generateName="warm-"))
    with pytest.raises(ApiException) as info:
        await fake_core_v1.create_namespaced_pod(NS, pod_body(generateName="warm-"))
    assert info.value.status == 409
    assert status_of(info.value)["reason"] == "AlreadyExists"


async def test_every_write_bumps_one_global_resource_version(fake_core_v1: CoreV1Api) -> None:
    a = await fake_core_v1.create_namespaced_pod(NS, pod_body("a"))
    b = await fake_core_v1.create_namespaced_pod("other", pod_body("b"))
    assert int(b.metadata.resource_version) == int(a.metadata.resource_version) + 1
    listed = await fake_core_v1.list_pod_for_all_namespaces()
    assert listed.metadata.resource_version == b.metadata.resource_version
    assert {p.metadata.name for p in listed.items} == {"a", "b"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=poold", {"p1", "p2", "p3"}),
        ("app==poold,tier=warm", {"p1"}),
        ("tier!=warm", {"p2", "p3", "x"}),
        ("tier", {"p1", "p2"}),
        ("!tier", {"p3", "x"}),
        ("tier in (warm,busy)", {"p1", "p2"}),
        ("tier in (busy)", {"p2"}),
        ("tier notin (warm)", {"p2", "p3", "x"}),
        ("app=poold, tier notin (warm, busy)", {"p3"}),
    ],
)
async def test_list_label_selectors(
    fake_core_v1: CoreV1Api, selector: str, expected: set[str]
) -> None:
    await fake_core_v1.create_namespaced_pod(NS, pod_body("p1", {"app": "poold", "tier": "warm"}))
    await fake_core_v1.create_namespaced_pod(NS, pod_body("p2", {"app": "poold", "tier": "busy"}))
    await fake_core_v1.create_namespaced_pod(NS, pod_body("p3", {"app": "poold"}))
    await fake_core_v1.create_namespaced_pod(NS, pod_body("x", {"app": "other"}))
    listed = await fake_core_v1.list_namespaced_pod(NS, label_selector=selector)
    assert {p.metadata.name for p in listed.items} == expected


async def test_bad_selectors_are_400(fake_core_v1: CoreV1Api) -> None:
    with pytest.raises(ApiException) as info:
        await fake_core_v1.list_namespaced_pod(NS, label_selector="tier in (")
    assert info.value.status == 400
    with pytest.raises(ApiException) as info:
        await fake_core_v1.list_namespaced_pod(NS, field_selector="spec.containers=x")
    assert info.value.status == 400


async def test_list_field_selectors(fake_api: FakeApiServer, fake_core_v1: CoreV1Api) -> None:
    await fake_core_v1.create_namespaced_pod(NS, pod_body("a"))
    await fake_core_v1.create_namespaced_pod(NS, pod_body("b"))
    await fake_core_v1.patch_namespaced_pod_status(
        "b",
        NS,
        {"status": {"phase": "Running"}},
        _content_type=MERGE,  # type: ignore[call-arg]
    )
    by_name = await fake_core_v1.list_namespaced_pod(NS, field_selector="metadata.name=a")
    assert [p.metadata.name for p in by_name.items] == ["a"]
    running = await fake_core_v1.list_namespaced_pod(NS, field_selector="status.phase=Running")
    assert [p.metadata.name for p in running.items] == ["b"]
    not_running = await fake_core_v1.list_namespaced_pod(
        NS, field_selector="status.phase!=Running,metadata.name!=zzz"
    )
    assert [p.metadata.name for p in not_running.items] == ["a"]
    assert fake_api.verb_counts["list"] == 3


async def test_list_pagination(fake_core_v1: CoreV1Api) -> None:
    for i in range(5):
        await fake_core_v1.create_namespaced_pod(NS, pod_body(f"p{i}"))
    first = await fake_core_v1.list_namespaced_pod(NS, limit=2)
    assert [p.metadata.name for p in first.items] == ["p0", "p1"]
    rest = await fake_core_v1.list_namespaced_pod(NS, limit=10, _continue=first.metadata._continue)
    assert [p.metadata.name for p in rest.items] == ["p2", "p3", "p4"]
    assert rest.metadata._continue is None


async def test_replace_with_stale_resource_version_conflicts(fake_core_v1: CoreV1Api) -> None:
    pod = await fake_core_v1.create_namespaced_pod(NS, pod_body("p", {"a": "1"}))
    pod.metadata.labels["a"] = "2"
    updated = await fake_core_v1.replace_namespaced_pod("p", NS, pod)
    assert updated.metadata.labels["a"] == "2"
    assert int(updated.metadata.resource_version) > int(pod.metadata.resource_version)
    pod.metadata.labels["a"] = "3"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as info:
        await fake_core_v1.replace_namespaced_pod("p", NS, pod)
    assert info.value.status == 409
    status = status_of(info.value)
    assert status["kind"] == "Status"
    assert status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]
    assert (await fake_core_v1.read_namespaced_pod("p", NS)).metadata.labels["a"] == "2"


async def test_pod_spec_is_immutable_and_status_is_separate(fake_core_v1: CoreV1Api) -> None:
    pod = await fake_core_v1.create_namespaced_pod(NS, pod_body("p"))
    pod.spec.containers[0].command = ["something-else"]
    with pytest.raises(ApiException) as info:
        await fake_core_v1.replace_namespaced_pod("p", NS, pod)
    assert info.value.status == 422
    pod = await fake_core_v1.read_namespaced_pod("p", NS)
    pod.status.phase = "Running"
    same = await fake_core_v1.replace_namespaced_pod("p", NS, pod)
    assert same.status.phase == "Pending"  # the main resource ignores status
    assert same.metadata.resource_version == pod.metadata.resource_version  # no-op write
    pod.status.phase = "Running"
    moved = await fake_core_v1.replace_namespaced_pod_status("p", NS, pod)
    assert moved.status.phase == "Running"


async def test_invalid_label_value_is_422(fake_core_v1: CoreV1Api) -> None:
    with pytest.raises(ApiException) as info:
        await fake_core_v1.create_namespaced_pod(NS, pod_body("p", {"job": "x" * 64}))
    assert info.value.status == 422
    assert status_of(info.value)["reason"] == "Invalid"


async def test_json_patch_with_test_op(fake_core_v1: CoreV1Api) -> None:
    await fake_core_v1.create_namespaced_pod(NS, pod_body("p", {"state": "idle"}))
    claim = [
        {"op": "test", "path": "/metadata/labels/state", "value": "idle"},
        {"op": "replace", "path": "/metadata/labels/state", "value": "busy"},
        {"op": "add", "path": "/metadata/annotations", "value": {"poold/job": "j1"}},
    ]
    patched = await fake_core_v1.patch_namespaced_pod("p", NS, claim)
    assert patched.metadata.labels["state"] == "busy"
    assert patched.metadata.annotations == {"poold/job": "j1"}
    with pytest.raises(ApiException) as info:  # a second claim loses the race
        await fake_core_v1.patch_namespaced_pod("p", NS, claim)
    assert info.value.status == 422
    assert status_of(info.value)["reason"] == "Invalid"
    removal = [{"op": "remove", "path": "/metadata/labels/state"}]
    patched = await fake_core_v1.patch_namespaced_pod("p", NS, removal)
    assert "state" not in (patched.metadata.labels or {})


async def test_json_patch_resource_version_precondition(fake_core_v1: CoreV1Api) -> None:
    pod = await fake_core_v1.create_namespaced_pod(NS, pod_body("p"))
    await fake_core_v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"x": "1"}}})
    stale = [
        {
            "op": "replace",
            "path": "/metadata/resourceVersion",
            "value": pod.metadata.resource_version,
        },
        {"op": "add", "path": "/metadata/labels/y", "value": "1"},
    ]
    with pytest.raises(ApiException) as info:
        await fake_core_v1.patch_namespaced_pod("p", NS, stale)
    assert info.value.status == 409


async def test_merge_patch_of_labels(fake_core_v1: CoreV1Api) -> None:
    pod = await fake_core_v1.create_namespaced_pod(NS, pod_body("p", {"keep": "1", "drop": "1"}))
    patch = {"metadata": {"labels": {"drop": None, "new": "2"}}}
    patched = await fake_core_v1.patch_namespaced_pod("p", NS, patch, _content_type=MERGE)  # type: ignore[call-arg]
    assert patched.metadata.labels == {"keep": "1", "new": "2"}
    # A resourceVersion in the patch body is a precondition.
    stale = {"metadata": {"resourceVersion": pod.metadata.resource_version, "labels": {"z": "1"}}}
    with pytest.raises(ApiException) as info:
        await fake_core_v1.patch_namespaced_pod("p", NS, stale, _content_type=MERGE)  # type: ignore[call-arg]
    assert info.value.status == 409
    # The client's default for a dict body is strategic merge: same result for labels.
    patched = await fake_core_v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"z": "3"}}})
    assert patched.metadata.labels == {"keep": "1", "new": "2", "z": "3"}


async def test_delete_with_preconditions(fake_core_v1: CoreV1Api) -> None:
    pod = await fake_core_v1.create_namespaced_pod(NS, pod_body("p"))
    wrong = V1DeleteOptions(preconditions=V1Preconditions(uid="not-the-uid"))
    with pytest.raises(ApiException) as info:
        await fake_core_v1.delete_namespaced_pod("p", NS, body=wrong)
    assert info.value.status == 409
    assert "Precondition failed" in status_of(info.value)["message"]
    stale_rv = V1DeleteOptions(preconditions=V1Preconditions(resource_version="1"))
    await fake_core_v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(ApiException) as info:
        await fake_core_v1.delete_namespaced_pod("p", NS, body=stale_rv)
    assert info.value.status == 409
    right = V1DeleteOptions(preconditions=V1Preconditions(uid=pod.metadata.uid))
    await fake_core_v1.delete_namespaced_pod("p", NS, body=right)
    with pytest.raises(ApiException) as info:
        await fake_core_v1.read_namespaced_pod("p", NS)
    assert info.value.status == 404
    assert status_of(info.value)["reason"] == "NotFound"


async def test_delete_unbound_pod_is_immediate_and_bound_pod_is_graceful(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    await fake_core_v1.create_namespaced_pod(NS, pod_body("free"))
    await fake_core_v1.delete_namespaced_pod("free", NS)
    assert fake_api.get_pod(NS, "free") is None
    bound = pod_body("bound")
    bound["spec"]["nodeName"] = "somewhere"  # no kubelet will ever finish it
    await fake_core_v1.create_namespaced_pod(NS, bound)
    deleting = await fake_core_v1.delete_namespaced_pod("bound", NS, grace_period_seconds=5)
    assert deleting.metadata.deletion_timestamp is not None
    assert deleting.metadata.deletion_grace_period_seconds == 5
    assert fake_api.get_pod(NS, "bound") is not None
    await fake_core_v1.delete_namespaced_pod("bound", NS, grace_period_seconds=0)
    assert fake_api.get_pod(NS, "bound") is None


async def test_fail_next_gives_api_exception(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    fake_api.fail_next(1, status=500)
    with pytest.raises(ApiException) as info:
        await fake_core_v1.list_namespaced_pod(NS)
    assert info.value.status == 500
    assert status_of(info.value)["reason"] == "InternalError"
    await fake_core_v1.list_namespaced_pod(NS)  # only one failure was armed
    fake_api.fail_next(2, status=429, method="POST", path="/pods", retry_after=1)
    await fake_core_v1.list_namespaced_pod(NS)  # a GET does not match
    for _ in range(2):
        with pytest.raises(ApiException) as info:
            await fake_core_v1.create_namespaced_pod(NS, pod_body(generateName="p-"))
        assert info.value.status == 429
        assert info.value.headers is not None
        assert info.value.headers["Retry-After"] == "1"
    await fake_core_v1.create_namespaced_pod(NS, pod_body(generateName="p-"))
    assert [r.method for r in fake_api.requests].count("POST") == 3
    assert fake_api.verb_counts["create"] == 3


async def test_dropped_connection_raises_client_error(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    # POST is not idempotent, so aiohttp does not retry it: one drop is seen.
    fake_api.drop_connections(1, method="POST")
    with pytest.raises(aiohttp.ClientError):
        await fake_core_v1.create_namespaced_pod(NS, pod_body("p"))
    assert fake_api.get_pod(NS, "p") is None
    # aiohttp silently retries an idempotent request (GET, PUT, DELETE) once
    # after ServerDisconnectedError, so a single drop is invisible there...
    fake_api.drop_connections(1, path="/pods")
    assert (await fake_core_v1.list_namespaced_pod(NS)).items == []
    assert fake_api.verb_counts["list"] == 2
    # ...and it takes two in a row to surface the error.
    fake_api.drop_connections(2, path="/pods")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fake_core_v1.list_namespaced_pod(NS)
    assert (await fake_core_v1.list_namespaced_pod(NS)).items == []


async def test_lease_create_replace_conflict(fake_api: FakeApiServer) -> None:
    async with ApiClient(configuration=fake_api.client_configuration()) as client:
        leases = CoordinationV1Api(client)
        body: Any = {
            "metadata": {"name": "poold-leader"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
        }
        created = await leases.create_namespaced_lease(NS, body)
        assert created.spec.holder_identity == "a"
        with pytest.raises(ApiException) as info:
            await leases.create_namespaced_lease(NS, body)
        assert info.value.status == 409
        mine = await leases.read_namespaced_lease("poold-leader", NS)
        theirs = await leases.read_namespaced_lease("poold-leader", NS)
        theirs.spec.holder_identity = "b"
        await leases.replace_namespaced_lease("poold-leader", NS, theirs)
        mine.spec.holder_identity = "a"
        with pytest.raises(ApiException) as info:
            await leases.replace_namespaced_lease("poold-leader", NS, mine)
        assert info.value.status == 409
        assert fake_api.get_lease(NS, "poold-leader") is not None
        assert fake_api.get_lease(NS, "poold-leader")["spec"]["holderIdentity"] == "b"  # type: ignore[index]
        await leases.delete_namespaced_lease("poold-leader", NS)
        assert fake_api.get_lease(NS, "poold-leader") is None


async def test_events_are_stored(fake_api: FakeApiServer, fake_core_v1: CoreV1Api) -> None:
    event: Any = {
        "metadata": {"generateName": "poold-"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": NS},
        "reason": "Claimed",
        "message": "job j1",
        "type": "Normal",
    }
    await fake_core_v1.create_namespaced_event(NS, event)
    stored = fake_api.events(NS)
    assert [e["reason"] for e in stored] == ["Claimed"]


async def test_unknown_paths_are_404(fake_api: FakeApiServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{fake_api.url}/api/v1/namespaces/x/configmaps") as resp,
    ):
        assert resp.status == 404
        assert (await resp.json())["kind"] == "Status"


async def test_kubernetes_asyncio_leader_election_over_lease(fake_api: FakeApiServer) -> None:
    leading = asyncio.Event()

    async def started() -> None:
        leading.set()

    async def stopped() -> None:
        pass

    async with ApiClient(configuration=fake_api.client_configuration()) as client:
        lock = LeaseLock("poold-leader", NS, "candidate-a", client)
        config = electionconfig.Config(lock, 15, 10, 2, started, stopped)
        task = asyncio.create_task(leaderelection.LeaderElection(config).run())
        try:
            await asyncio.wait_for(leading.wait(), 10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    lease = fake_api.get_lease(NS, "poold-leader")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "candidate-a"
