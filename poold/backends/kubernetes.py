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
import functools
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from poold.backends.base import BackendUnavailable, EventSink, WorkerEvent
from poold.backends.podtemplate import (
    ANNOTATION_JOB,
    claim_patch,
    has_runtimes_mount,
    hot_tenant,
    release_patch,
    render,
    runtimes_mount,
    selector,
    token_of,
)
from poold.config import ConfigError, KubernetesSettings, RetrySettings
from poold.errors import BackendError, Error
from poold.retry import RetryPolicy
from poold.tasks import Supervisor
from poold.types import JobId, PodName, TenantName

log = structlog.get_logger(__name__)

TEMPORARY = frozenset({429, 500, 502, 503, 504})


@contextlib.asynccontextmanager
async def reading(response: aiohttp.ClientResponse) -> AsyncIterator[aiohttp.ClientResponse]:
    """``async with response``, except that an answer left before its end (a watch at
    stop(), a timeout, a bad line) has its connection aborted, not shut down politely.
    Over TLS a polite close waits for the API server's close_notify, which nothing
    awaits: a stop() that returned first left the socket open, and an event loop that
    ended then left it for the garbage collector (ResourceWarning: unclosed
    transport). aiohttp's own connector aborts its TLS connections at close the same
    way."""
    async with response:
        try:
            yield response
        except BaseException:  # re-raised: only the connection is dealt with here
            connection = response.connection
            transport = connection.transport if connection is not None else None
            if transport is not None and not response.content.at_eof():
                transport.abort()
            raise


CLAIM_ATTEMPTS = 3
"""Claims of one pod in a row that may meet a 409 with the pod still unclaimed (the
kubelet keeps writing its status) before the pool is told to try another pod."""


class KubeApiError(BackendError):
    """The Kubernetes API answered with an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:300]}")
        self.status = status
        self.body = body

    @property
    def retriable(self) -> bool:  # type: ignore[override]
        return self.status in TEMPORARY


class Expired(BackendError):
    """The watch's resourceVersion is too old (410): list again."""

    retriable = True


IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "poold"


@dataclass(frozen=True)
class Connection:
    """How to reach the API, and the namespace poold works in when none is configured."""

    configuration: Configuration
    namespace: str
    source: str
    """Where the credentials came from, for the start-up log line."""


def choose_kubeconfig(
    settings: KubernetesSettings, env: Mapping[str, str], home: Path
) -> tuple[str | None, str]:
    """The kubeconfig file(s) to read, in kubectl's order, and where that choice came
    from; None: none exists, so the in-cluster service account."""
    if settings.kubeconfig is not None:
        if not settings.kubeconfig.is_file():
            raise ConfigError(f"kubernetes.kubeconfig: {settings.kubeconfig} does not exist")
        return str(settings.kubeconfig), "kubernetes.kubeconfig"
    listed = [p for p in env.get("KUBECONFIG", "").split(":") if p]
    if any(Path(p).expanduser().is_file() for p in listed):
        return ":".join(listed), "$KUBECONFIG"
    default = home / ".kube" / "config"
    if default.is_file():
        return str(default), str(default)
    return None, "the in-cluster service account"


def pod_namespace(env: Mapping[str, str], namespace_file: Path) -> str | None:
    """The namespace of the pod poold runs in, if it runs in one."""
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    if namespace_file.is_file():
        return namespace_file.read_text().strip() or None
    return None


async def load_configuration(
    settings: KubernetesSettings, *, environ: Mapping[str, str] | None = None,
    home: Path | None = None, namespace_file: Path = IN_CLUSTER_NAMESPACE,
) -> Connection:
    """kubectl's order: the ``kubernetes.kubeconfig`` key, ``$KUBECONFIG`` (a list of
    files), ``~/.kube/config``, then the in-cluster service account. The namespace:
    the key, else the pod's own (``POD_NAMESPACE`` or the service account's file), else
    the kubeconfig context's, else ``poold``."""
    env = os.environ if environ is None else environ
    configuration = Configuration()
    files, source = choose_kubeconfig(settings, env, home or Path.home())
    context_namespace = None
    in_pod = None
    if files is not None:
        loader = await kube_config.load_kube_config(
            config_file=files, client_configuration=configuration, persist_config=False)
        token = configuration.api_key.get("BearerToken")
        if token:  # a tokenFile ending in a newline, as `kubectl create token >file` writes
            configuration.api_key["BearerToken"] = token.strip()
        context: Any = loader.current_context or {}
        context_namespace = (context.get("context") or {}).get("namespace") or None
        in_pod = env.get("POD_NAMESPACE") or None
    elif env.get("KUBERNETES_SERVICE_HOST"):
        kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration)
        in_pod = pod_namespace(env, namespace_file)
    else:
        raise ConfigError(
            "no Kubernetes credentials: set kubernetes.kubeconfig or $KUBECONFIG, create "
            "~/.kube/config, or run poold in a pod with a service account")
    namespace = settings.namespace or in_pod or context_namespace or DEFAULT_NAMESPACE
    return Connection(configuration, namespace, source)


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
        agent_env: Mapping[str, str] | None = None,
        retry: RetrySettings | None = None,
        runtimes: str | None = None,
    ) -> None:
        """``agent_env``: agent settings from poold's config (``POOLD_AGENT_*``) that
        every runner pod gets, over what the template says. ``retry``: how a failed
        API call waits before it is tried again (``[retry]``). ``runtimes``: where
        runner pods mount the published runtimes (``kubernetes.runtimes_mount_path``),
        None without runtimes; a template that cannot have that mount raises
        :class:`TemplateError` here, at start-up."""
        if runtimes is not None:
            runtimes_mount(template, runtimes)
        self._runtimes = runtimes
        self.settings = settings
        self._policy = RetryPolicy.of(retry or RetrySettings(), attempts=settings.api_retries)
        self.namespace = settings.namespace or os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE
        """Resolved by :meth:`prepare` when the backend finds its own credentials."""
        self._template = template
        self._agent_env = {**(agent_env or {}), "POOLD_AGENT_KAFKA": kafka}
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
        self.tasks = Supervisor("kubernetes")
        """The pod watch; an unexpected failure starts it again after the retry pause."""
        self.synced = asyncio.Event()
        self.relists = 0
        """Full lists of the pool's pods: one at start, one after each expired watch."""

    # -- lifecycle ---------------------------------------------------------------

    @property
    def configuration(self) -> Configuration:
        """How to reach the API (resolved by :meth:`prepare`)."""
        assert self._configuration is not None, "call prepare() first"
        return self._configuration

    async def prepare(self) -> None:
        if self._configuration is None:
            connection = await load_configuration(self.settings)
            self._configuration = connection.configuration
            self.namespace = connection.namespace
            log.info("kubernetes credentials", source=connection.source,
                     server=connection.configuration.host, namespace=self.namespace)

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
        self.tasks.run(self._watch_forever, name="pod watch", restart=self._policy.forever())

    async def stop(self) -> None:
        await self.tasks.stop()
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # -- raw API calls -------------------------------------------------------------

    async def _json(self, call: Awaitable[Any]) -> dict[str, Any]:
        """One API call, answer included, within ``api_timeout_s``: kubernetes-asyncio
        waits forever on a silent connection. A timeout is a temporary failure."""
        try:
            async with asyncio.timeout(self.settings.api_timeout_s):
                try:
                    response = await call
                except ApiException as e:
                    raise KubeApiError(int(e.status or 0), str(e.body)) from e
                async with reading(response):
                    text = await response.text()
                    if response.status >= 300:
                        raise KubeApiError(response.status, text)
                    data: dict[str, Any] = json.loads(text) if text else {}
                    return data
        finally:
            if asyncio.iscoroutine(call):
                call.close()  # never awaited when the timeout struck first

    async def _retry(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Retry what is known to be temporary: 5xx, 429, dropped connections. A
        refusal (4xx) is raised as it is; a connection that never worked becomes
        :class:`BackendUnavailable`."""
        try:
            return await self._policy.call(call, what=f"kubernetes: {what}",
                                           retriable=_temporary, log=log)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise BackendUnavailable(f"Kubernetes API unreachable ({what}): {e}") from e

    async def _owner_reference(self, deployment: str) -> dict[str, Any] | None:
        assert self._client is not None
        from kubernetes_asyncio.client import AppsV1Api  # noqa: PLC0415

        apps: Any = AppsV1Api(self._client)

        async def call() -> dict[str, Any]:
            return await self._json(apps.read_namespaced_deployment(
                deployment, self.namespace, _preload_content=False))

        try:
            obj = await self._retry("read owner deployment", call)
        except KubeApiError as e:
            raise ConfigError(
                f"kubernetes.owner_deployment: cannot read Deployment {deployment} in "
                f"namespace {self.namespace} ({e}); poold's Role needs get on deployments "
                "(deploy/base/rbac.yaml), or unset the key") from e
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
        self.relists += 1
        self.synced.set()

    async def _watch_forever(self) -> None:
        """Watch until stopped; a failure waits as the retry policy says (without a
        limit on attempts) and counts from zero again after a watch that worked."""
        policy = self._policy.forever()
        failures = 0
        while True:
            try:
                if self._rv is None:
                    await self._relist()
                await self._watch_once()
                failures = 0
            except Expired:
                log.info("watch expired (410); listing again")
                self._rv = None
            except (KubeApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                failures += 1
                pause = policy.delay(failures)
                policy.log_retry(log, what="kubernetes: pod watch", attempt=failures + 1,
                                 error=e, pause_s=pause)
                await asyncio.sleep(pause)
                if isinstance(e, KubeApiError) and e.status == 410:
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
        async with reading(response):
            if response.status >= 300:
                raise KubeApiError(response.status, await response.text())
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
            raise KubeApiError(int(obj.get("code") or 500), str(obj.get("message")))
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
        outdated = self._outdated(pod)
        if outdated is not None and _holder(pod) is None:
            # made by a poold with another configuration (before [runtimes] were added,
            # say): adopted, it would take runtime jobs it cannot run. One holding a job
            # serves it and is recycled after (release_claim refuses to hand it back)
            self._emit(WorkerEvent("gone", name, reason=outdated))
            self.tasks.run(functools.partial(self._replace, name), name=f"replace {name}",
                           finishable=True)
            return
        status = pod.get("status", {})
        ip = status.get("podIP")
        if ip and _ready(status):
            if reported != "ready":  # for the first time, or again after a lapse
                job = _holder(pod)
                tenant, jobs = hot_tenant(pod)
                self._emit(WorkerEvent(
                    "ready", name, endpoint=endpoint(ip, self.settings.agent_port),
                    job=JobId(job) if job else None, token=token_of(pod),
                    tenant=tenant, jobs=jobs,
                ))
        elif reported == "ready":
            self._emit(WorkerEvent("unready", name, reason=_unready_reason(status)))
        elif reported is None and name not in self._announced:
            self._announced.add(name)
            self._emit(WorkerEvent("seen", name))

    def _outdated(self, pod: dict[str, Any]) -> str | None:
        """Why a pod cannot run every job this configuration's pods can, or None."""
        if self._runtimes is None or has_runtimes_mount(pod, self._runtimes):
            return None
        return (f"the pod lacks the read-only runtimes mount at {self._runtimes} "
                "(kubernetes.runtimes_mount_path) that runner pods get with [runtimes.*]: a "
                "poold without them made it; replaced by a new pod")

    async def _replace(self, pod: PodName) -> None:
        """Delete an outdated pod (reported gone already); the pool makes a new one."""
        try:
            await self.delete(pod)
        except BackendUnavailable as e:
            log.warning("could not delete an outdated runner pod; will try again when it "
                        "is seen next", pod=pod, error=str(e))
            self._reported.pop(pod, None)

    def _deleted(self, name: PodName, reason: str) -> None:
        self.pods.pop(name, None)
        if self._reported.get(name) != "gone":
            self._emit(WorkerEvent("gone", name, reason=reason))
        self._reported.pop(name, None)
        self._announced.discard(name)

    def _emit(self, event: WorkerEvent) -> None:
        if event.kind in ("ready", "unready", "gone"):
            self._reported[event.pod] = event.kind
        if self._sink is not None:
            self._sink(event)

    # -- acting ----------------------------------------------------------------------

    async def create(self, pod: PodName) -> None:
        assert self._core is not None
        core = self._core
        body = render(self._template, name=pod, pool=self.settings.pool_name,
                      env=self._agent_env, owner=self._owner,
                      token=secrets.token_urlsafe(32), runtimes=self._runtimes)

        async def call() -> dict[str, Any]:
            return await self._json(core.create_namespaced_pod(
                self.namespace, body, _preload_content=False))

        try:
            created = await self._retry("create pod", call)
        except KubeApiError as e:
            if e.status == 409:  # a retried create that had in fact succeeded
                return
            raise BackendUnavailable(f"cannot create runner pod {pod}: {e}") from e
        if PodName(created["metadata"]["name"]) not in self.pods:
            self._observe(created)

    async def claim(self, pod: PodName, job: JobId) -> bool:
        """A conditional write; on 409 the pod itself says who won. A real server answers
        409 also when our own write was committed but its answer lost (the retry carried
        the old resourceVersion), or when the kubelet wrote the status in between."""
        current = self.pods.get(pod)
        fresh = False
        for _ in range(CLAIM_ATTEMPTS):
            if current is None or _gone_reason(current) is not None:
                return False
            holder = _holder(current)
            if holder is not None:
                if holder == job:
                    self.pods[pod] = current
                    return True
                if fresh:
                    return False
                # the watch may still be delivering the pod's previous job (a hot pod,
                # released a moment ago): ask the server before giving the pod up
                current, fresh = await self._read_pod(pod), True
                continue
            try:
                current = await self._claim_once(pod, job, current)
            except BackendUnavailable:
                # the write may have been committed with every answer lost: look
                found = await self._read_pod(pod)
                if found is not None and _holder(found) == job:
                    self.pods[pod] = found
                    return True
                raise
            except KubeApiError as e:
                if e.status == 409:
                    current, fresh = await self._read_pod(pod), True
                    continue
                if e.status in (404, 422):
                    return False
                raise BackendUnavailable(f"cannot claim runner pod {pod}: {e}") from e
        log.warning("claim kept conflicting; giving the pod up for now", pod=pod)
        return False

    async def release_claim(
        self, pod: PodName, *, job: JobId, tenant: TenantName, jobs: int
    ) -> bool:
        """Fenced like the claim: the patch applies only to the version of the pod we
        saw holding ``job``, so a pod is handed back only by the daemon whose job it
        ran, and keeps ``tenant`` on it for good (a restarted daemon reads it there)."""
        core = self._core
        current = self.pods.get(pod)
        if current is not None and self._outdated(current) is not None:
            return False  # the pool recycles it: it could not run every job of the tenant
        for _ in range(CLAIM_ATTEMPTS):
            if current is None or _gone_reason(current) is not None:
                return False
            holder = _holder(current)
            if holder != job:
                # our own release, committed with its answer lost, or not ours at all
                released = holder is None and hot_tenant(current)[0] == tenant
                if released:
                    self.pods[pod] = current
                return released
            patch = release_patch(resource_version=current["metadata"]["resourceVersion"],
                                  tenant=tenant, jobs=jobs)

            async def call(patch: dict[str, Any] = patch) -> dict[str, Any]:
                return await self._json(core.patch_namespaced_pod(
                    pod, self.namespace, patch,
                    _content_type="application/merge-patch+json", _preload_content=False))

            try:
                current = dict(await self._retry("release pod", call))
            except BackendUnavailable:
                current = await self._read_pod(pod)  # committed, answer lost?
                continue
            except KubeApiError as e:
                if e.status == 409:  # the kubelet wrote the status meanwhile
                    current = await self._read_pod(pod)
                    continue
                if e.status in (404, 422):
                    return False
                raise BackendUnavailable(f"cannot release runner pod {pod}: {e}") from e
            self.pods[pod] = current
            return True
        log.warning("release kept conflicting; recycling the pod", pod=pod)
        return False

    async def _claim_once(
        self, pod: PodName, job: JobId, seen: dict[str, Any]
    ) -> dict[str, Any]:
        patch = claim_patch(resource_version=seen["metadata"]["resourceVersion"], job=job)
        core = self._core

        async def call() -> dict[str, Any]:
            return await self._json(core.patch_namespaced_pod(
                pod, self.namespace, patch, _content_type="application/merge-patch+json",
                _preload_content=False))

        return dict(await self._retry("claim pod", call))

    async def _read_pod(self, pod: PodName) -> dict[str, Any] | None:
        core = self._core

        async def call() -> dict[str, Any]:
            return await self._json(core.read_namespaced_pod(
                pod, self.namespace, _preload_content=False))

        try:
            return dict(await self._retry("read pod", call))
        except KubeApiError as e:
            if e.status == 404:
                return None
            raise BackendUnavailable(f"cannot read runner pod {pod}: {e}") from e

    async def delete(self, pod: PodName) -> None:
        assert self._core is not None
        core = self._core

        async def call() -> dict[str, Any]:
            return await self._json(core.delete_namespaced_pod(
                pod, self.namespace, grace_period_seconds=self._grace,
                _preload_content=False))

        try:
            await self._retry("delete pod", call)
        except KubeApiError as e:
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


def _temporary(error: BaseException) -> bool:
    """A dropped or silent connection, or an answer that means "not now" (5xx, 429)."""
    if isinstance(error, (aiohttp.ClientError, OSError, TimeoutError)):
        return True
    return isinstance(error, Error) and error.retriable


def _holder(pod: dict[str, Any]) -> str | None:
    """The job a pod's claim names, if any."""
    job: str | None = (pod["metadata"].get("annotations") or {}).get(ANNOTATION_JOB)
    return job


def endpoint(ip: str, port: int) -> str:
    """The agent's URL; an IPv6 address goes in brackets."""
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}"


def _ready(status: dict[str, Any]) -> bool:
    if status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _unready_reason(status: dict[str, Any]) -> str:
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready" and c.get("message"):
            return f"not ready: {c['message']}"
    return f"not ready (phase {status.get('phase')})"


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

