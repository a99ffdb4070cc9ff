"""Slow and greedy clients: request heads and bodies that must keep arriving, and
a cap on uploads in progress per tenant and in total.

A request head must be complete within ``server.header_timeout_s`` of its first
byte (:class:`HeadGuard`), while an idle keep-alive connection may wait for its
next request for ``server.idle_timeout_s`` (aiohttp's keep-alive timer, also the
bound for a connection that never sends a byte). Keeping the two apart matters:
closing idle connections as early as slow heads would race clients that reuse
a pooled connection just as the server closes it. A body is read here, chunk
by chunk, against two deadlines: no pause longer than ``server.body_timeout_s``,
and, once that long has passed, an average rate of at least
``server.min_upload_rate_kib_s``. A client that misses either gets 408 and its
connection is closed, so its socket and temporary file are freed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import Gauge

from poold.config import ServerSettings
from poold.errors import RequestError

CHUNK = 256 * 1024


class SlowBody(RequestError):
    """The request body stalled or trickled; ``str()`` says which limit it missed."""


class BodyTooLarge(RequestError):
    """The request body is over its size cap; ``str()`` names the key."""


class TooManyUploads(RequestError):
    """An upload slot is not free; ``str()`` names the limit."""

    retriable = True


@dataclass(frozen=True)
class BodyRules:
    timeout_s: float
    min_rate: float
    """Bytes per second; 0 = no minimum."""

    @classmethod
    def from_settings(cls, server: ServerSettings) -> BodyRules:
        return cls(timeout_s=server.body_timeout_s,
                   min_rate=server.min_upload_rate_kib_s * 1024)


async def body_chunks(request: web.Request, rules: BodyRules) -> AsyncIterator[bytes]:
    """The request body as it arrives, or :class:`SlowBody` when it stalls or trickles."""
    loop = asyncio.get_running_loop()
    start = last = loop.time()
    received = 0
    while True:
        now = loop.time()
        wait = rules.timeout_s - (now - last)
        if rules.min_rate > 0:
            # by then the average since the start would drop below the minimum rate
            wait = min(wait, start + max(rules.timeout_s, received / rules.min_rate) - now)
        try:
            async with asyncio.timeout(max(wait, 0)):
                chunk = await request.content.read(CHUNK)
        except TimeoutError:
            now = loop.time()
            if now - last >= rules.timeout_s * 0.99:
                raise SlowBody(
                    f"the request body stopped arriving: nothing for {rules.timeout_s:g} s "
                    "(server.body_timeout_s); send the whole body without pausing"
                ) from None
            raise SlowBody(
                f"the request body arrived too slowly: {received} bytes in {now - start:.1f} s, "
                f"below the minimum of {rules.min_rate / 1024:g} KiB/s "
                "(server.min_upload_rate_kib_s)"
            ) from None
        if not chunk:
            return
        received += len(chunk)
        last = loop.time()
        yield chunk


async def read_body(request: web.Request, rules: BodyRules, *, max_bytes: int,
                    key: str) -> bytes:
    """The whole body under :func:`body_chunks`' deadlines, or :class:`BodyTooLarge`."""
    too_large = BodyTooLarge(
        f"the request body is larger than {max_bytes // (1024 * 1024)} MiB ({key})")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for chunk in body_chunks(request, rules):
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


async def cut_off(request: web.Request, message: str) -> web.StreamResponse:
    """Answer 408 and close the connection: the rest of a stalled body never comes,
    so waiting to drain it (aiohttp's lingering close) would hold the socket on."""
    response = web.json_response({"error": message}, status=408,
                                 headers={"Connection": "close"})
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


def broken_off(request: web.Request) -> web.StreamResponse:
    """End an answer that cannot go on: its status line and maybe part of its body
    went out already (a stream), so no error answer can follow them; one written
    into the open body would leave the client waiting for the rest for ever. The
    connection is closed without the body's last chunk, so the client sees the
    answer cut short (never a short body that looks whole). The response returned
    writes nothing: aiohttp finds the connection closed."""
    request.protocol.force_close()
    return web.StreamResponse()


class UploadSlots:
    """Uploads in progress, per tenant and in total."""

    def __init__(self, *, total: int, per_tenant: int, gauge: Gauge) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self._gauge = gauge
        self._held: Counter[str] = Counter()
        self._changed = asyncio.Event()

    @property
    def in_progress(self) -> int:
        return sum(self._held.values())

    @contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        if self._held[tenant] >= self.per_tenant:
            raise TooManyUploads(
                f"this tenant already has {self._held[tenant]} uploads in progress, the most "
                f"allowed at once (server.max_uploads_per_tenant); retry when one has finished"
            )
        if self.in_progress >= self.total:
            raise TooManyUploads(
                f"{self.in_progress} uploads are in progress, the most this server takes at "
                "once (server.max_uploads); retry shortly"
            )
        self._held[tenant] += 1
        self._note()
        try:
            yield
        finally:
            self._held[tenant] -= 1
            if not self._held[tenant]:
                del self._held[tenant]
            self._note()

    def _note(self) -> None:
        self._gauge.set(self.in_progress)
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, count: int, within_s: float) -> None:
        """For tests: wait until this many uploads are in progress."""
        async with asyncio.timeout(within_s):
            while self.in_progress != count:
                await self._changed.wait()


class HeadGuard(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: from the first byte of a request
    head, the head must be complete (the request reaches :func:`head_arrived`)
    within the timeout, or the connection is closed."""

    by_handler: dict[RequestHandler, HeadGuard] = {}

    def __init__(self, inner: RequestHandler, *, timeout_s: float) -> None:
        self.inner = inner
        self.timeout_s = timeout_s
        self.handling = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        HeadGuard.by_handler[self.inner] = self
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.handling and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expired)
        self.inner.data_received(data)

    def eof_received(self) -> None:
        self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        HeadGuard.by_handler.pop(self.inner, None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def started(self) -> None:
        self._cancel()
        self.handling = True

    def finished(self) -> None:
        self.handling = False

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self.handling:
            self.inner.force_close()


@web.middleware
async def head_arrived(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                       ) -> web.StreamResponse:
    """The outermost middleware: a request that reaches it has its whole head."""
    guard = HeadGuard.by_handler.get(request.protocol)
    if guard is None:
        return await handler(request)
    guard.started()
    try:
        return await handler(request)
    finally:
        guard.finished()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through :class:`HeadGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 header_timeout_s: float) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._header_timeout_s = header_timeout_s

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one picked for port 0)."""
        assert isinstance(self._server, asyncio.Server)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        timeout = self._header_timeout_s
        self._server = await asyncio.get_running_loop().create_server(
            lambda: HeadGuard(server(), timeout_s=timeout), self._host, self._port,
            reuse_address=True,
        )
