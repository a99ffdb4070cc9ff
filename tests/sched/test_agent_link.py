"""poold's line to an agent: a cancelled caller is cancelled, never nudges over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from poold.sched.agent_link import AgentLink

pytestmark = pytest.mark.timeout(30)


async def test_events_cancelled_while_the_link_opens_never_post_run() -> None:
    """A job's task cancelled (poold stopping, the job cancelled) while its link to
    the agent is still opening ends cancelled; it must not fall through to
    ``POST /run``, which would start the job on the worker after all."""
    opening, release = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    async def link(request: web.Request) -> web.StreamResponse:
        opening.set()
        await release.wait()  # the handshake does not complete while the test runs
        return web.Response(status=503)

    async def run(request: web.Request) -> web.StreamResponse:
        runs.append(request.path)
        return web.Response(text='{"type": "finished"}\n')

    app = web.Application()
    app.router.add_get("/link", link)
    app.router.add_post("/run", run)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        agent = AgentLink(session, str(server.make_url("")).rstrip("/"), token="t")

        async def follow() -> list[dict[str, Any]]:
            return [event async for event in agent.events()]

        following = asyncio.create_task(follow())
        try:
            async with asyncio.timeout(10):
                await opening.wait()
            following.cancel()
            with pytest.raises(asyncio.CancelledError):
                await following
            assert runs == [], "the cancelled job was started over POST /run"
        finally:
            release.set()
            await agent.close()
