"""The Kubernetes backend: a warm pool of runner pods, through kubernetes-asyncio.

Level-triggered: the backend keeps the latest object it has seen for every
pod of this pool (list, then watch from the list's resourceVersion; relist on
410 Gone; back off with jitter on errors; re-open a watch that stays silent)
and derives what it reports from those objects, never from a remembered
event. A pod is ``ready`` once its Ready condition is true and it has an IP,
and ``gone`` once it is deleted, being deleted, or finished.

A claim is a merge patch that carries the resourceVersion of the pod we saw
idle, so it applies only if nobody changed the pod since: two daemons can
never hand one pod two jobs, and the pod's label and annotation record the
job for a restarted daemon to find.

Only this module talks to the Kubernetes API; raw JSON is used instead of the
generated models, which cost milliseconds per pod at a thousand pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from poold.backends.base import BackendUnavailable, EventSink, WorkerEvent
from poold.backends.podtemplate import ANNOTATION_JOB, render, selector
from poold.config import KubernetesSettings
from poold.types import JobId, PodName

log = structlog.get_logger(__name__)

TEMPORARY = frozenset({429, 500, 502, 503, 504})


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:300]}")
        self.status = status
        self.body = body


class Expired(Exception):
    """The watch's resourceVersion is too old (410): list again."""


async def load_configuration(settings: KubernetesSettings) -> Configuration:
    configuration = Configuration()
    if settings.kubeconfig is not None:
        await kube_config.load_kube_config(
            config_file=str(settings.kubeconfig), client_configuration=configuration
        )
    else:
        kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    return configuration


class KubernetesBackend:
    name = "kubernetes"

    def __init__(
        self,
        *,
        settings: KubernetesSettings,
        template: dict[str, Any],
        kafka: str,
        configuration: Configuration | None = None,
        delete_grace_s: int = 2,
    ) -> None:
        self.settings = settings
        self.namespace = settings.namespace
        self._template = template
        self._kafka = kafka
        self._configuration = configuration
        self._grace = delete_grace_s
        self._selector = selector(settings.pool_name)
        self._client: ApiClient | None = None
        self._core: Any = None
        """CoreV1Api, used in raw mode (``_preload_content=False``), which its type
        hints do not describe."""
        self._sink: EventSink | None = None
        self._owner: dict[str, Any] | None = None
        self.pods: dict[PodName, dict[str, Any]] = {}
        """The latest object seen for each pod of this pool."""
        self._reported: dict[PodName, str] = {}
        self._announced: set[PodName] = set()
        self._rv: str | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------

    @property
    def configuration(self) -> Configuration:
        """How to reach the API (resolved by :meth:`prepare`)."""
        assert self._configuration is not None, "call prepare() first"
        return self._configuration

    async def prepare(self) -> None:
        if self._configuration is None:
            self._configuration = await load_configuration(self.settings)

    async def start(self, sink: EventSink) -> None:
        if self._client is not None:
            return
        self._sink = sink
        await self.prepare()
        self._client = ApiClient(configuration=self.configuration)
        self._core = CoreV1Api(self._client)
        if self.settings.owner_deployment:
            self._owner = await self._owner_reference(self.settings.owner_deployment)
        await self._retry("list pods", self._relist)
        self._watcher = asyncio.create_task(self._watch_forever(), name="kubernetes-watch")

    async def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # -- raw API calls -------------------------------------------------------------

    async def _json(self, call: Awaitable[Any]) -> dict[str, Any]:
        try:
            response = await call
        except ApiException as e:
            raise ApiError(int(e.status or 0), str(e.body)) from e
        async with response:
            text = await response.text()
            if response.status >= 300:
                raise ApiError(response.status, text)
            data: dict[str, Any] = json.loads(text) if text else {}
            return data

    async def _retry(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Retry what is known to be temporary: 5xx, 429, dropped connections."""
        attempts = self.settings.api_retries
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except ApiError as e:
                if e.status not in TEMPORARY or attempt == attempts:
                    raise
                error = str(e)
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                if attempt == attempts:
                    raise BackendUnavailable(f"Kubernetes API unreachable ({what}): {e}") from e
                error = repr(e)
            delay = min(5.0, 0.05 * 2**attempt) * (0.5 + random.random())  # noqa: S311
            log.warning("kubernetes call failed, retrying", call=what,
                        attempt=f"{attempt + 1}/{attempts}", error=error)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _owner_reference(self, deployment: str) -> dict[str, Any] | None:
        assert self._client is not None
        from kubernetes_asyncio.client import AppsV1Api  # noqa: PLC0415

        apps: Any = AppsV1Api(self._client)
        try:
            obj = await self._json(apps.read_namespaced_deployment(
                deployment, self.namespace, _preload_content=False))
        except ApiError as e:
            log.warning("owner deployment not readable; pods get no ownerReference",
                        deployment=deployment, error=str(e))
            return None
        return {
            "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
            "uid": obj["metadata"]["uid"], "controller": False, "blockOwnerDeletion": False,
        }

    # -- observing -------------------------------------------------------------------

    async def _relist(self) -> None:
        assert self._core is not None
        data = await self._json(self._core.list_namespaced_pod(
            self.namespace, label_selector=self._selector, _preload_content=False))
        seen = {PodName(p["metadata"]["name"]): p for p in data.get("items", [])}
        for name in list(self.pods):
            if name not in seen:
                self._deleted(name, "the pod disappeared")
        for pod in seen.values():
            self._observe(pod)
        self._rv = data.get("metadata", {}).get("resourceVersion")
        self.synced.set()

    async def _watch_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                if self._rv is None:
                    await self._relist()
                await self._watch_once()
                backoff = 0.1
            except Expired:
                log.info("watch expired (410); listing again")
                self._rv = None
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                log.warning("pod watch failed; reconnecting", error=str(e), backoff_s=backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311
                backoff = min(backoff * 2, 10.0)
                if isinstance(e, ApiError) and e.status == 410:
                    self._rv = None

    async def _watch_once(self) -> None:
        assert self._core is not None
        timeout = self.settings.watch_timeout_s
        response = await self._core.list_namespaced_pod(
            self.namespace, label_selector=self._selector, watch=True,
            resource_version=self._rv, timeout_seconds=int(timeout),
            allow_watch_bookmarks=True, _preload_content=False,
            _request_timeout=timeout + 30,
        )
        async with response:
            if response.status >= 300:
                raise ApiError(response.status, await response.text())
            while True:
                async with asyncio.timeout(timeout + 10):
                    line = await response.content.readline()
                if not line:
                    return
                if line.strip():
                    self._event(json.loads(line))

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Expired
            raise ApiError(int(obj.get("code") or 500), str(obj.get("message")))
        rv = obj.get("metadata", {}).get("resourceVersion")
        if kind == "BOOKMARK":
            self._rv = rv or self._rv
            return
        name = PodName(obj["metadata"]["name"])
        if kind == "DELETED":
            self._deleted(name, "the pod was deleted")
        else:
            self._observe(obj)
        self._rv = rv or self._rv

    def _observe(self, pod: dict[str, Any]) -> None:
        name = PodName(pod["metadata"]["name"])
        self.pods[name] = pod
        reported = self._reported.get(name)
        if reported == "gone":
            return
        reason = _gone_reason(pod)
        if reason is not None:
            self._emit(WorkerEvent("gone", name, reason=reason))
            return
        status = pod.get("status", {})
        ip = status.get("podIP")
        if reported is None and ip and _ready(status):
            job = pod["metadata"].get("annotations", {}).get(ANNOTATION_JOB)
            self._emit(WorkerEvent(
                "ready", name, endpoint=f"http://{ip}:{self.settings.agent_port}",
                job=JobId(job) if job else None,
            ))
        elif reported is None and name not in self._announced:
            self._announced.add(name)
            self._emit(WorkerEvent("seen", name))

    def _deleted(self, name: PodName, reason: str) -> None:
        self.pods.pop(name, None)
        if self._reported.get(name) != "gone":
            self._emit(WorkerEvent("gone", name, reason=reason))
        self._reported.pop(name, None)
        self._announced.discard(name)

    def _emit(self, event: WorkerEvent) -> None:
        if event.kind in ("ready", "gone"):
            self._reported[event.pod] = event.kind
        if self._sink is not None:
            self._sink(event)

    # -- acting ----------------------------------------------------------------------

    async def create(self, pod: PodName) -> None:
        assert self._core is not None
        core = self._core
        body = render(self._template, name=pod, pool=self.settings.pool_name,
                      kafka=self._kafka, owner=self._owner)

        async def call() -> dict[str, Any]:
            return await self._json(core.create_namespaced_pod(
                self.namespace, body, _preload_content=False))

        try:
            created = await self._retry("create pod", call)
        except ApiError as e:
            if e.status == 409:  # a retried create that had in fact succeeded
                return
            raise BackendUnavailable(f"cannot create runner pod {pod}: {e}") from e
        if PodName(created["metadata"]["name"]) not in self.pods:
            self._observe(created)

    async def claim(self, pod: PodName, job: JobId) -> bool:
        assert self._core is not None
        current = self.pods.get(pod)
        if current is None or ANNOTATION_JOB in current["metadata"].get("annotations", {}):
            return False
        patch = {
            "metadata": {
                "resourceVersion": current["metadata"]["resourceVersion"],
                "labels": {"poold.dev/state": "busy"},
                "annotations": {ANNOTATION_JOB: job},
            }
        }
        core = self._core

        async def call() -> dict[str, Any]:
            return await self._json(core.patch_namespaced_pod(
                pod, self.namespace, patch, _content_type="application/merge-patch+json",
                _preload_content=False))

        try:
            updated = await self._retry("claim pod", call)
        except ApiError as e:
            if e.status in (404, 409, 422):
                return False
            raise BackendUnavailable(f"cannot claim runner pod {pod}: {e}") from e
        annotations = updated["metadata"].get("annotations", {})
        if annotations.get(ANNOTATION_JOB) != job:
            return False
        self.pods[pod] = updated
        return True

    async def delete(self, pod: PodName) -> None:
        assert self._core is not None
        core = self._core

        async def call() -> dict[str, Any]:
            return await self._json(core.delete_namespaced_pod(
                pod, self.namespace, grace_period_seconds=self._grace,
                _preload_content=False))

        try:
            await self._retry("delete pod", call)
        except ApiError as e:
            if e.status == 404:
                if pod not in self.pods:
                    self._deleted(pod, "the pod was deleted")
                return
            raise BackendUnavailable(f"cannot delete runner pod {pod}: {e}") from e

    def pod_ip(self, pod: PodName) -> str | None:
        found = self.pods.get(pod)
        return None if found is None else found.get("status", {}).get("podIP")

    def pid_of(self, pod: PodName) -> int | None:
        return None


def _ready(status: dict[str, Any]) -> bool:
    if status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _gone_reason(pod: dict[str, Any]) -> str | None:
    """Why this pod will not (or no longer) serve, or None if it still may."""
    meta = pod["metadata"]
    status = pod.get("status", {})
    if meta.get("deletionTimestamp"):
        return "the pod is being deleted"
    phase = status.get("phase")
    if phase not in ("Failed", "Succeeded"):
        return None
    parts = [f"the pod ended {phase}"]
    if status.get("reason"):
        parts.append(f"reason {status['reason']}")
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            parts.append(
                f"container {container.get('name')} {terminated.get('reason', 'terminated')} "
                f"(exit code {terminated.get('exitCode')})"
            )
    if status.get("message"):
        parts.append(str(status["message"]))
    return ", ".join(parts)

