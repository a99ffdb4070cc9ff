"""poold's line to one agent: the nudge out, the job's events back.

Opening a connection to a freshly started agent costs several milliseconds,
which would sit right on the submit-to-start path. So the link is opened
when the worker becomes ready (a WebSocket to the agent's ``/link``) and the
nudge is one message on it. A hot worker (``pool.reuse``) keeps its link
for its next job: the agent streams each job's events on it in turn. If the
link cannot be opened, the nudge falls back to ``POST /run`` (whose response
streams the same events), and behind both the slot stays the source of truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp
import structlog

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 5.0


class Link(Protocol):
    """poold's side of the line to one agent (:class:`AgentLink`, or a script in tests)."""

    async def nudge(self) -> None:
        """Tell the agent its ``job.json`` is there (best effort: it also polls)."""

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """Yield the agent's events until ``finished`` or a broken line (nudging
        it first if :meth:`nudge` was not called)."""
        ...

    async def cancel(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def reusable(self) -> bool:
        """Open, and nothing of an earlier job left unread on it: the next job of a hot
        worker (``pool.reuse``) can use it instead of a new connection."""
        ...


class AgentLink:
    def __init__(
        self, session: aiohttp.ClientSession, endpoint: str, *, token: str | None = None
    ) -> None:
        self.endpoint = endpoint
        self._session = session
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._nudged = False
        self._between_jobs = True
        """No job's events are in flight on the line (its ``finished`` was read)."""
        self._connecting: asyncio.Task[None] = asyncio.create_task(
            self._connect(), name=f"link-{endpoint}"
        )

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                self._ws = await self._session.ws_connect(
                    f"{self.endpoint}/link", autoping=False, heartbeat=None,
                    headers=self._headers,
                )
        except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as e:
            # RuntimeError: the session closed under us (poold is stopping)
            log.info("no link to the agent; nudging over plain HTTP", error=str(e))

    async def _connected(self) -> None:
        """Wait for the connection attempt to end (closed by :meth:`close`, too)
        without cancelling it: a cancellation of the caller goes on to the caller
        (never on to ``POST /run``), the link stays for the worker's next use."""
        await asyncio.wait({self._connecting})

    async def nudge(self) -> None:
        """The nudge, sent by the job's own task right after delivery: no hand-off
        to another task stands between ``job.json`` and the agent hearing of it.
        Without a line the nudge is ``POST /run`` in :meth:`events`."""
        await self._connected()
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(aiohttp.ClientError, OSError, ConnectionError):
                await ws.send_str('{"op":"run"}')
                self._nudged = True

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Yield the agent's events until ``finished`` or a broken line (nudging it
        first unless :meth:`nudge` did)."""
        await self._connected()
        ws = self._ws
        if ws is not None and not ws.closed:
            self._between_jobs = False
            try:
                if not self._nudged:
                    await ws.send_str('{"op":"run"}')
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    event = json.loads(message.data)
                    if event.get("type") == "finished":
                        # read to the end of this job: the line can carry the next one
                        self._between_jobs, self._nudged = True, False
                        yield event
                        return
                    yield event
            except (aiohttp.ClientError, OSError, ConnectionError) as e:
                log.warning("agent link broke", error=str(e))
            return
        async with self._session.post(f"{self.endpoint}/run", headers=self._headers) as response:
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    yield event
                    if event.get("type") == "finished":
                        return

    @property
    def reusable(self) -> bool:
        return self._ws is not None and not self._ws.closed and self._between_jobs

    async def cancel(self) -> None:
        ws = self._ws
        with contextlib.suppress(aiohttp.ClientError, OSError, ConnectionError, TimeoutError):
            async with asyncio.timeout(2):
                if ws is not None and not ws.closed:
                    await ws.send_str('{"op":"cancel"}')
                else:
                    await self._session.post(f"{self.endpoint}/cancel", headers=self._headers)

    async def close(self) -> None:
        self._connecting.cancel()
        await self._connected()
        if self._ws is not None:
            with contextlib.suppress(aiohttp.ClientError, OSError, ConnectionError):
                await self._ws.close()
