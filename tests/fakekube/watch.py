"""Serving one ``?watch=1`` request: replay, then stream, like the real server.

The order of operations is what makes resumption exact: the subscription is
registered and the replay (history after the client's resourceVersion, or a
synthetic ADDED per existing object when it sent none) is computed in one
synchronous step, so every later write lands in the subscription's queue and
nothing is lost or duplicated between replay and live events.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from .errors import StatusError
from .resources import ResourceType
from .store import Bookmark, Change, Obj, ObjectStore, Subscription


def initial_events(
    store: ObjectStore, sub: Subscription, rt: ResourceType, rv: str
) -> list[tuple[str, Obj]]:
    """What the watch sends first; raises ``StatusError`` 410 when expired."""
    if rv in ("", "0"):
        return [("ADDED", o) for o in store.select(rt, sub.namespace, sub.labels, sub.fields)]
    changes = store.changes_since(int(rv))
    return [ev for c in changes if (ev := sub.translate(c)) is not None]


async def stream_watch(
    request: web.Request,
    store: ObjectStore,
    sub: Subscription,
    rt: ResourceType,
    *,
    rv: str,
    timeout: float | None,
    bookmarks: bool,
    bookmark_interval: float,
) -> web.StreamResponse:
    """Write the events of ``sub`` until timeout, close or client hang-up.

    An expired version is reported the way the real server does it: HTTP 200
    and a single ``ERROR`` event carrying a 410 ``Status``, then the end.
    """
    try:
        initial = initial_events(store, sub, rt, rv)
        expired: StatusError | None = None
    except StatusError as err:
        if err.code != 410:
            raise
        initial, expired = [], err
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        if expired is not None:
            await _send(resp, "ERROR", expired.to_status())
            return resp
        for type_, obj in initial:
            await _send(resp, type_, obj)
        await _pump(request, resp, store, sub, rt, timeout, bookmarks, bookmark_interval)
    except ConnectionError:
        pass  # the client hung up mid-stream; nothing left to tell it
    return resp


async def _pump(
    request: web.Request,
    resp: web.StreamResponse,
    store: ObjectStore,
    sub: Subscription,
    rt: ResourceType,
    timeout: float | None,
    bookmarks: bool,
    bookmark_interval: float,
) -> None:
    loop = asyncio.get_running_loop()
    end = None if timeout is None else loop.time() + timeout
    next_bookmark = loop.time() + bookmark_interval
    while True:
        now = loop.time()
        if end is not None and now >= end:
            return
        # Wake at least twice a second to notice clients that went away.
        wait = 0.5
        if end is not None:
            wait = min(wait, end - now)
        if bookmarks:
            wait = min(wait, max(0.0, next_bookmark - now))
        item: Change | Bookmark | None
        try:
            item = await asyncio.wait_for(sub.queue.get(), wait)
        except TimeoutError:
            if request.transport is None or request.transport.is_closing():
                return
            if not (bookmarks and loop.time() >= next_bookmark):
                continue
            # The queue is empty, so this watcher has seen everything up to now.
            item = Bookmark(store.rv)
        if item is None:
            return
        if isinstance(item, Bookmark):
            if bookmarks:
                next_bookmark = loop.time() + bookmark_interval
                meta = {"resourceVersion": str(item.rv)}
                obj = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}
                await _send(resp, "BOOKMARK", obj)
            continue
        event = sub.translate(item)
        if event is not None:
            await _send(resp, event[0], event[1])


async def _send(resp: web.StreamResponse, type_: str, obj: Obj) -> None:
    line = json.dumps({"type": type_, "object": obj}, separators=(",", ":")) + "\n"
    await resp.write(line.encode())
