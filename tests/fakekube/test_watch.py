"""Watch semantics of FakeApiServer as seen by ``kubernetes_asyncio.watch.Watch``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from .server import FakeApiServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

NS = "pool"


def pod_body(name: str, labels: dict[str, str] | None = None) -> Any:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "agent", "image": "poold:dev"}],
        },
    }


async def collect(stream: AsyncIterator[Any], n: int) -> list[tuple[str, str]]:
    """The next ``n`` events as (type, name) pairs."""
    out: list[tuple[str, str]] = []
    async for event in stream:
        out.append((event["type"], event["raw_object"]["metadata"].get("name", "")))
        if len(out) == n:
            break
    return out


async def test_resume_from_resource_version_sees_only_later_events(
    fake_core_v1: CoreV1Api,
) -> None:
    await fake_core_v1.create_namespaced_pod(NS, pod_body("before"))
    listed = await fake_core_v1.list_namespaced_pod(NS)
    rv = listed.metadata.resource_version
    await fake_core_v1.create_namespaced_pod(NS, pod_body("after"))
    await fake_core_v1.patch_namespaced_pod("before", NS, {"metadata": {"labels": {"x": "1"}}})
    await fake_core_v1.delete_namespaced_pod("after", NS)
    async with Watch() as w:
        stream = w.stream(fake_core_v1.list_namespaced_pod, NS, resource_version=rv)
        events = await collect(stream, 3)
    assert events == [("ADDED", "after"), ("MODIFIED", "before"), ("DELETED", "after")]


async def test_watch_without_resource_version_starts_with_synthetic_added(
    fake_core_v1: CoreV1Api,
) -> None:
    await fake_core_v1.create_namespaced_pod(NS, pod_body("a"))
    await fake_core_v1.create_namespaced_pod(NS, pod_body("b"))
    async with Watch() as w:
        stream = w.stream(fake_core_v1.list_namespaced_pod, NS)
        first = await collect(stream, 2)
        await fake_core_v1.create_namespaced_pod(NS, pod_body("c"))
        later = await collect(stream, 1)
    assert first == [("ADDED", "a"), ("ADDED", "b")]
    assert later == [("ADDED", "c")]


async def test_watch_decodes_objects_and_tracks_resource_version(
    fake_core_v1: CoreV1Api,
) -> None:
    async with Watch() as w:
        stream = w.stream(fake_core_v1.list_namespaced_pod, NS, resource_version="0")
        created = await fake_core_v1.create_namespaced_pod(NS, pod_body("a"))
        event = await stream.__anext__()
        assert event["object"].metadata.name == "a"  # a V1Pod, not a dict
        assert w.resource_version == created.metadata.resource_version


async def test_label_filtered_watch_sees_objects_leave_and_enter(
    fake_core_v1: CoreV1Api,
) -> None:
    await fake_core_v1.create_namespaced_pod(NS, pod_body("p", {"state": "idle"}))
    rv = (await fake_core_v1.list_namespaced_pod(NS)).metadata.resource_version
    claim = {"metadata": {"labels": {"state": "busy"}}}
    release = {"metadata": {"labels": {"state": "idle"}}}
    await fake_core_v1.patch_namespaced_pod("p", NS, claim)
    await fake_core_v1.patch_namespaced_pod("p", NS, release)
    async with Watch() as w:
        stream = w.stream(
            fake_core_v1.list_namespaced_pod, NS, label_selector="state=idle", resource_version=rv
        )
        events = await collect(stream, 2)
    # Leaving the selector looks like a delete, re-entering like an add.
    assert events == [("DELETED", "p"), ("ADDED", "p")]


async def test_expired_history_raises_410_with_timeout(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    await fake_core_v1.create_namespaced_pod(NS, pod_body("a"))
    rv = (await fake_core_v1.list_namespaced_pod(NS)).metadata.resource_version
    fake_api.expire_history()
    async with Watch() as w:
        stream = w.stream(
            fake_core_v1.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=5
        )
        with pytest.raises(ApiException) as info:
            await stream.__anext__()
    assert info.value.status == 410
    assert "Expired" in str(info.value.reason)
    # A fresh list gives a version that can be watched from again.
    fresh = (await fake_core_v1.list_namespaced_pod(NS)).metadata.resource_version
    async with Watch() as w:
        stream = w.stream(fake_core_v1.list_namespaced_pod, NS, resource_version=fresh)
        await fake_core_v1.create_namespaced_pod(NS, pod_body("b"))
        assert await collect(stream, 1) == [("ADDED", "b")]


async def test_expired_history_without_timeout_retries_once_then_raises(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    rv = (await fake_core_v1.list_namespaced_pod(NS)).metadata.resource_version
    await fake_core_v1.create_namespaced_pod(NS, pod_body("a"))
    fake_api.expire_history()
    fake_api.reset_requests()
    async with Watch() as w:
        stream = w.stream(fake_core_v1.list_namespaced_pod, NS, resource_version=rv)
        with pytest.raises(ApiException) as info:
            await stream.__anext__()
    assert info.value.status == 410
    # kubernetes-asyncio re-sends the same (still expired) version once first.
    watches = [r for r in fake_api.requests if r.query.get("watch")]
    assert [r.query["resourceVersion"] for r in watches] == [rv, rv]


async def test_history_window_is_bounded() -> None:
    async with (
        FakeApiServer(history=3) as api,
        ApiClient(configuration=api.client_configuration()) as client,
    ):
        core = CoreV1Api(client)
        rv = (await core.list_namespaced_pod(NS)).metadata.resource_version
        for i in range(5):
            await core.create_namespaced_pod(NS, pod_body(f"p{i}"))
        async with Watch() as w:
            stream = w.stream(core.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=5)
            with pytest.raises(ApiException) as info:
                await stream.__anext__()
        assert info.value.status == 410
        recent = str(int(rv) + 2)  # the last three changes are still kept
        async with Watch() as w:
            stream = w.stream(
                core.list_namespaced_pod, NS, resource_version=recent, timeout_seconds=5
            )
            assert await collect(stream, 3) == [("ADDED", f"p{i}") for i in (2, 3, 4)]


async def test_close_watches_is_transparent_to_a_resuming_client(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    rv = (await fake_core_v1.list_namespaced_pod(NS)).metadata.resource_version
    async with Watch() as w:
        stream = w.stream(fake_core_v1.list_namespaced_pod, NS, resource_version=rv)
        await fake_core_v1.create_namespaced_pod(NS, pod_body("a"))
        assert await collect(stream, 1) == [("ADDED", "a")]
        assert fake_api.close_watches() == 1
        await fake_core_v1.create_namespaced_pod(NS, pod_body("b"))
        # The client reconnects from its last version: no replay of "a".
        assert await collect(stream, 1) == [("ADDED", "b")]
    assert fake_api.verb_counts["watch"] == 2


async def test_timeout_seconds_ends_the_stream(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    async with Watch() as w:
        events = [
            e async for e in w.stream(fake_core_v1.list_namespaced_pod, NS, timeout_seconds=1)
        ]
    assert events == []
    await fake_api.wait_until(lambda: fake_api.open_watches == 0, timeout=5)


async def test_close_watches_ends_a_watch_with_timeout(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    async def consume() -> list[Any]:
        async with Watch() as w:
            return [
                e async for e in w.stream(fake_core_v1.list_namespaced_pod, NS, timeout_seconds=30)
            ]

    task = asyncio.create_task(consume())
    await fake_api.wait_for_watches(1)
    fake_api.close_watches()
    assert await asyncio.wait_for(task, 5) == []


async def test_bookmarks(fake_api: FakeApiServer, fake_core_v1: CoreV1Api) -> None:
    async with Watch() as w:
        stream = w.stream(
            fake_core_v1.list_namespaced_pod, NS, resource_version="0", allow_watch_bookmarks=True
        )
        created = await fake_core_v1.create_namespaced_pod(NS, pod_body("a"))
        assert (await stream.__anext__())["type"] == "ADDED"
        await fake_core_v1.create_namespaced_pod("elsewhere", pod_body("x"))
        fake_api.send_bookmarks()
        event = await stream.__anext__()
        assert event["type"] == "BOOKMARK"
        assert int(event["raw_object"]["metadata"]["resourceVersion"]) > int(
            created.metadata.resource_version
        )
        assert w.resource_version == event["raw_object"]["metadata"]["resourceVersion"]


async def test_failed_watch_request_raises(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    fake_api.fail_next(1, status=503, path="/pods")
    async with Watch() as w:
        stream = w.stream(fake_core_v1.list_namespaced_pod, NS, timeout_seconds=5)
        with pytest.raises(ApiException) as info:
            await stream.__anext__()
    assert info.value.status == 503


async def test_abruptly_cut_watch_raises_client_error(
    fake_api: FakeApiServer, fake_core_v1: CoreV1Api
) -> None:
    async with Watch() as w:
        stream = w.stream(fake_core_v1.list_namespaced_pod, NS, resource_version="0")
        await fake_core_v1.create_namespaced_pod(NS, pod_body("a"))
        assert await collect(stream, 1) == [("ADDED", "a")]
        fake_api.close_watches(abrupt=True)
        # Unlike a clean end of stream, a cut connection is not retried by
        # Watch, even without timeout_seconds: the caller must re-watch.
        with pytest.raises(aiohttp.ClientPayloadError):
            await stream.__anext__()
