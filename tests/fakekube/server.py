"""``FakeApiServer``: an aiohttp app speaking enough of the Kubernetes API.

It exists so the pool's Kubernetes backend can be tested through the real
kubernetes-asyncio client (URL building, serialisation, ``ApiException``,
``Watch``) rather than through mocks that share the backend's assumptions.
The HTTP layer here only parses requests, records them, injects faults and
streams watches; the API semantics live in ``store`` and ``resources``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from aiohttp import web
from kubernetes_asyncio.client import Configuration

from . import resources as res
from .errors import StatusError, bad_request
from .resources import ResourceType
from .routing import (
    error_response,
    json_response,
    parse_target,
    read_json,
    simple_endpoint,
    truthy,
    verb,
)
from .selectors import FieldSelector, LabelSelector
from .store import Obj, ObjectStore, Subscription
from .watch import stream_watch

log = logging.getLogger(__name__)

LogReader = Callable[[str, str], "str | None"]


class RecordedRequest(NamedTuple):
    """One request as seen by the server (query values: last one wins)."""

    method: str
    path: str
    query: dict[str, str]


@dataclass
class _Fault:
    remaining: int
    method: str | None
    path: str | None
    status: int = 0
    reason: str | None = None
    message: str | None = None
    retry_after: int | None = None
    drop: bool = False
    hang: bool = False
    lose_response: bool = False

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path is None or self.path in path


class FakeApiServer:
    """A Kubernetes API server for pods, leases and events on 127.0.0.1.

    ``async with FakeApiServer() as api:`` starts it on a random port.
    ``history`` bounds the change history a watch can resume from;
    ``bookmark_interval`` is how often watches that allow bookmarks get one.
    """

    def __init__(
        self,
        *,
        history: int = 1000,
        bookmark_interval: float = 1.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.store = ObjectStore(history=history)
        self.host = host
        self.port = 0
        self.bookmark_interval = bookmark_interval
        self.requests: list[RecordedRequest] = []
        self.verb_counts: Counter[str] = Counter()
        self.log_reader: LogReader | None = None
        self._faults: list[_Fault] = []
        self._watches: dict[Subscription, web.Request] = {}
        self._watch_opened = asyncio.Event()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen on ``host`` at a free port."""
        app = web.Application(middlewares=[self._middleware], client_max_size=16 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """End open watches and hung requests (or shutdown would wait for them), stop."""
        self._closing.set()
        self.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.port}"

    def client_configuration(self) -> Configuration:
        """A fresh kubernetes-asyncio configuration pointed at this server."""
        config = Configuration(host=self.url)
        config.verify_ssl = False
        return config

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """Write a kubeconfig (JSON is valid YAML) for ``load_kube_config``."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(json.dumps(doc, indent=2))
        return path

    # -- fault injection and observation -----------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        method: str | None = None,
        path: str | None = None,
        reason: str | None = None,
        message: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with a ``Status`` error.

        ``method`` (e.g. "POST") and ``path`` (a substring of the URL path)
        narrow which requests count; unmatched requests pass through.
        """
        self._faults.append(
            _Fault(
                n,
                method,
                path,
                status,
                reason,
                message or f"injected failure ({status})",
                retry_after,
            )
        )

    def drop_connections(
        self, n: int = 1, *, method: str | None = None, path: str | None = None
    ) -> None:
        """Close the next ``n`` matching requests' connections with no response."""
        self._faults.append(_Fault(n, method, path, drop=True))

    def hang_next(
        self, n: int = 1, *, method: str | None = None, path: str | None = None
    ) -> None:
        """Accept the next ``n`` matching requests and never answer them (a silent
        connection, as behind a dead load balancer), until :meth:`close`."""
        self._faults.append(_Fault(n, method, path, hang=True))

    def lose_responses(
        self, n: int = 1, *, method: str | None = None, path: str | None = None
    ) -> None:
        """Carry out the next ``n`` matching requests (a write is committed), then cut the
        connection before the answer: the client cannot know its write happened."""
        self._faults.append(_Fault(n, method, path, lose_response=True))

    def clear_faults(self) -> None:
        """Forget pending ``fail_next`` / ``drop_connections`` rules."""
        self._faults.clear()

    def close_watches(self, *, abrupt: bool = False) -> int:
        """End every open watch stream; returns how many there were.

        A clean end is what the real server does at a watch's timeout (the
        client must resume from its last resourceVersion); ``abrupt`` instead
        cuts the TCP connection mid-stream.
        """
        watches = list(self._watches.items())
        for sub, request in watches:
            if abrupt and request.transport is not None:
                request.transport.abort()
            sub.close()
        return len(watches)

    @property
    def open_watches(self) -> int:
        """How many watch streams are currently being served."""
        return len(self._watches)

    def send_bookmarks(self) -> None:
        """Send a BOOKMARK now to each open watch that allows bookmarks."""
        for sub in self._watches:
            sub.request_bookmark()

    def expire_history(self) -> None:
        """Drop the change history: resuming any seen version now gets 410."""
        self.store.expire_history()

    def reset_requests(self) -> None:
        """Clear ``requests`` and ``verb_counts``."""
        self.requests.clear()
        self.verb_counts.clear()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds, re-checking after each write."""
        await self.store.wait_until(predicate, timeout)

    async def wait_for_watches(self, n: int, timeout: float = 10.0) -> None:
        """Wait (event-driven) until at least ``n`` watch streams are open."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.open_watches < n:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"only {self.open_watches} watches open, wanted {n}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watch_opened.wait(), remaining)

    # -- direct state access for assertions ---------------------------------

    def get_pod(self, namespace: str, name: str) -> Obj | None:
        """A snapshot of a pod (do not mutate), or None."""
        return self.store.peek(res.PODS, namespace, name)

    def pods(self, namespace: str | None = None, label_selector: str | None = None) -> list[Obj]:
        """Snapshots of the pods, optionally filtered."""
        sel = LabelSelector(label_selector) if label_selector else None
        return self.store.select(res.PODS, namespace, sel)

    def get_lease(self, namespace: str, name: str) -> Obj | None:
        """A snapshot of a lease, or None."""
        return self.store.peek(res.LEASES, namespace, name)

    def events(self, namespace: str | None = None) -> list[Obj]:
        """Core/v1 and events.k8s.io/v1 Events that clients created."""
        return self.store.select(res.EVENTS, namespace) + self.store.select(
            res.EVENTS_V1, namespace
        )

    # -- HTTP plumbing -----------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        query = dict(request.query.items())
        self.requests.append(RecordedRequest(request.method, request.path, query))
        self.verb_counts[verb(request.method, request.path, query)] += 1
        fault = next(
            (
                f
                for f in self._faults
                if f.remaining > 0 and f.matches(request.method, request.path)
            ),
            None,
        )
        if fault is not None:
            fault.remaining -= 1
            self._faults = [f for f in self._faults if f.remaining > 0]
            if fault.hang:
                await self._closing.wait()
            if fault.lose_response:
                with contextlib.suppress(StatusError, web.HTTPException):
                    await handler(request)
            if fault.drop or fault.hang or fault.lose_response:
                if request.transport is not None:
                    request.transport.close()
                raise web.HTTPInternalServerError()  # never reaches the client
            err = StatusError(
                fault.status, fault.message or "", fault.reason, retry_after=fault.retry_after
            )
            return error_response(err)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except StatusError as err:
            return error_response(err)
        except web.HTTPException:
            raise
        except ValueError as exc:  # e.g. a non-numeric gracePeriodSeconds or limit
            return error_response(bad_request(f"invalid request: {exc}"))
        except Exception as exc:  # pragma: no cover - a bug in the fake itself
            log.exception("fakekube: internal error serving %s %s", request.method, request.path)
            return error_response(StatusError(500, f"fakekube internal error: {exc!r}"))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        simple = simple_endpoint(path)
        if simple is not None:
            return simple
        target = parse_target(path)
        if isinstance(target, web.StreamResponse):
            return target
        method = request.method
        q = request.query
        store = self.store
        if target.name is None:
            ns = target.namespace
            if method == "GET" and truthy(q.get("watch")):
                return await self._watch(request, target.rt, ns)
            if method == "GET":
                return json_response(self._list(target.rt, ns, q))
            if method == "POST" and ns is not None:
                body = await read_json(request)
                return json_response(store.create(target.rt, ns, body), 201)
            if method == "DELETE" and ns is not None:
                return json_response(await self._delete_collection(request, target.rt, ns))
            raise StatusError(
                405, f"the server does not allow this method on the requested resource ({method})"
            )
        assert target.namespace is not None
        ns, name, sub = target.namespace, target.name, target.subresource
        if sub == "log" and target.rt.is_pod and method == "GET":
            return self._log(ns, name, q)
        if sub not in (None, "status") or (sub == "status" and not target.rt.has_status):
            raise StatusError(404, "the server could not find the requested resource", "NotFound")
        if method == "GET":
            return json_response(store.get(target.rt, ns, name))
        if method == "PUT":
            return json_response(store.replace(target.rt, ns, name, await read_json(request), sub))
        if method == "PATCH":
            body = await read_json(request)
            return json_response(store.patch(target.rt, ns, name, request.content_type, body, sub))
        if method == "DELETE" and sub is None:
            opts = await read_json(request, allow_empty=True) or {}
            grace = q.get("gracePeriodSeconds", opts.get("gracePeriodSeconds"))
            pre = opts.get("preconditions") or {}
            for qname, field in (
                ("preconditions.uid", "uid"),
                ("preconditions.resourceVersion", "resourceVersion"),
            ):
                if qname in q:
                    pre[field] = q[qname]
            grace_int = None if grace is None else int(grace)
            return json_response(store.delete(target.rt, ns, name, grace_int, pre))
        raise StatusError(
            405, f"the server does not allow this method on the requested resource ({method})"
        )

    def _selectors(
        self, rt: ResourceType, q: Mapping[str, str]
    ) -> tuple[LabelSelector | None, FieldSelector | None]:
        labels = LabelSelector(q["labelSelector"]) if q.get("labelSelector") else None
        fields = (
            FieldSelector(q["fieldSelector"], rt.field_selectors)
            if q.get("fieldSelector")
            else None
        )
        return labels, fields

    def _list(self, rt: ResourceType, ns: str | None, q: Mapping[str, str]) -> Obj:
        labels, fields = self._selectors(rt, q)
        items = self.store.select(rt, ns, labels, fields)
        meta: Obj = {"resourceVersion": str(self.store.rv)}
        start = q.get("continue")
        if start:
            items = [
                o
                for o in items
                if (o["metadata"]["namespace"], o["metadata"]["name"]) > tuple(start.split("/", 1))
            ]
        limit = int(q.get("limit") or 0)
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            meta["continue"] = f"{last['namespace']}/{last['name']}"
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": items,
        }

    async def _delete_collection(self, request: web.Request, rt: ResourceType, ns: str) -> Obj:
        opts = await read_json(request, allow_empty=True) or {}
        grace = request.query.get("gracePeriodSeconds", opts.get("gracePeriodSeconds"))
        labels, fields = self._selectors(rt, request.query)
        deleted = [
            self.store.delete(rt, ns, o["metadata"]["name"], None if grace is None else int(grace))
            for o in self.store.select(rt, ns, labels, fields)
        ]
        meta = {"resourceVersion": str(self.store.rv)}
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": deleted,
        }

    def _log(self, ns: str, name: str, q: Mapping[str, str]) -> web.Response:
        self.store.get(res.PODS, ns, name)  # 404 if the pod is gone
        text = self.log_reader(ns, name) if self.log_reader is not None else None
        if text is None:
            raise bad_request(f'container in pod "{name}" is waiting to start: no logs')
        if q.get("tailLines"):
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(q["tailLines"]) :]) if int(q["tailLines"]) else ""
        return web.Response(text=text, content_type="text/plain")

    async def _watch(
        self, request: web.Request, rt: ResourceType, ns: str | None
    ) -> web.StreamResponse:
        """Serve ``?watch=1``; see ``watch.stream_watch``."""
        q = request.query
        labels, fields = self._selectors(rt, q)
        rv = q.get("resourceVersion") or ""
        if rv and not rv.isdigit():
            raise bad_request(f"invalid resource version {rv!r}")
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        sub = self.store.subscribe(rt, ns, labels, fields)
        self._watches[sub] = request
        self._watch_opened.set()
        self._watch_opened = asyncio.Event()
        try:
            return await stream_watch(
                request,
                self.store,
                sub,
                rt,
                rv=rv,
                timeout=timeout,
                bookmarks=truthy(q.get("allowWatchBookmarks")),
                bookmark_interval=self.bookmark_interval,
            )
        finally:
            self._watches.pop(sub, None)
            self.store.unsubscribe(sub)
