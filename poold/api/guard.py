"""Slow and greedy clients: request bodies that must keep arriving, and a cap on
uploads in progress per tenant and in total.

The request head is bounded by aiohttp's keep-alive timer (see ``Api.app``); a
body is read here, chunk by chunk, against two deadlines: no pause longer than
``server.body_timeout_s``, and, once that long has passed, an average rate of at
least ``server.min_upload_rate_kib_s``. A client that misses either gets 408 and
its connection is closed, so its socket and temporary file are freed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import Gauge

from poold.config import ServerSettings

CHUNK = 256 * 1024


class SlowBody(Exception):
    """The request body stalled or trickled; ``str()`` says which limit it missed."""


class BodyTooLarge(Exception):
    """The request body is over its size cap; ``str()`` names the key."""


class TooManyUploads(Exception):
    """An upload slot is not free; ``str()`` names the limit."""


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
