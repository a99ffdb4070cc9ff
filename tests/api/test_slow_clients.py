"""Slow and stalled clients cannot hold the HTTP API: a request head or body that
does not arrive in time is cut off, a trickling upload is cut off below the
minimum rate, and uploads at once are capped per tenant and in total, while
other clients are served meanwhile.

One daemon with short timeouts (1 s) serves all cases. Each test waits on the
event it is about (the server closing the socket, a response arriving), never
on a sleep.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from poold.daemon import Daemon
from tests.api.helpers import still_serving
from tests.support.daemon import TOKENS, Client, make_settings, serving
from tests.support.wasm_fixtures import module

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 4.0
MIN_RATE_KIB_S = 64
# an upper bound for "cut off": the timeout plus generous room for a loaded machine;
# without the fix the connection is held for an hour (aiohttp's keep-alive default)
CUT_WITHIN_S = 15.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, broker: str
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    settings = make_settings(
        tmp_path_factory.mktemp("slow"), broker,
        server__header_timeout_s=HEADER_TIMEOUT_S, server__body_timeout_s=BODY_TIMEOUT_S,
        server__idle_timeout_s=IDLE_TIMEOUT_S,
        server__min_upload_rate_kib_s=MIN_RATE_KIB_S,
        server__max_uploads=3, server__max_uploads_per_tenant=2,
        pool__min_idle=0,
    )
    async with serving(settings) as served_:
        yield served_


@pytest.fixture(scope="module")
def alpha(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    return Client(served[0], served[1], "alpha")


@pytest.fixture(scope="module")
def beta(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    return Client(served[0], served[1], "beta")


async def connect(client: Client) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = client.base.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(CUT_WITHIN_S):
        return await reader.read()


def auth(tenant: str) -> bytes:
    return f"Authorization: Bearer {TOKENS[tenant]}\r\n".encode()


async def test_request_head_without_blank_line_is_cut_off(alpha: Client) -> None:
    reader, writer = await connect(alpha)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        await writer.drain()
        closing = asyncio.ensure_future(until_closed(reader))
        # other clients are served while the slow one is held
        for _ in range(3):
            await still_serving(alpha)
        assert not closing.done() or await closing == b""
        assert await closing == b""
    finally:
        writer.close()


async def test_trickled_request_head_is_cut_off(alpha: Client) -> None:
    """Sending a header byte now and then does not keep the connection: the head as a
    whole must arrive within server.header_timeout_s."""
    reader, writer = await connect(alpha)
    closing = asyncio.ensure_future(until_closed(reader))
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        while not closing.done():
            writer.write(b"X-Slow: y\r\n")
            await writer.drain()
            await asyncio.wait([closing], timeout=0.2)
    except ConnectionError:
        pass  # the server closed while we wrote: that is the point
    finally:
        writer.close()
    assert await closing == b""


async def test_stalled_upload_body_is_cut_off_with_408(alpha: Client) -> None:
    reader, writer = await connect(alpha)
    try:
        writer.write(b"PUT /v1/modules HTTP/1.1\r\nHost: x\r\n" + auth("alpha")
                     + b"Content-Type: application/wasm\r\nContent-Length: 100\r\n\r\n"
                     + b"\x00asm")
        await writer.drain()
        closing = asyncio.ensure_future(until_closed(reader))
        await still_serving(alpha)
        response = await closing
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), response
    assert "server.body_timeout_s" in json.loads(body)["error"], body


async def test_stalled_job_body_is_cut_off_with_408(alpha: Client) -> None:
    reader, writer = await connect(alpha)
    try:
        writer.write(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + auth("alpha")
                     + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                     + b'{"mo')
        await writer.drain()
        response = await until_closed(reader)
    finally:
        writer.close()
    assert response.startswith(b"HTTP/1.1 408"), response


async def test_trickling_upload_below_the_minimum_rate_is_cut_off(alpha: Client) -> None:
    """A byte every 0.1 s never trips the inactivity timeout, but stays far below
    server.min_upload_rate_kib_s."""
    reader, writer = await connect(alpha)
    closing = asyncio.ensure_future(until_closed(reader))
    try:
        writer.write(b"PUT /v1/modules HTTP/1.1\r\nHost: x\r\n" + auth("alpha")
                     + b"Content-Type: application/wasm\r\nContent-Length: 100000\r\n\r\n"
                     + b"\x00asm\x01\x00\x00\x00")
        while not closing.done():
            writer.write(b"\x00")
            await writer.drain()
            await asyncio.wait([closing], timeout=0.1)
    except ConnectionError:
        pass
    finally:
        writer.close()
    response = await closing
    assert response.startswith(b"HTTP/1.1 408"), response
    assert b"min_upload_rate_kib_s" in response, response


async def test_concurrent_uploads_are_capped_per_tenant_and_in_total(
    alpha: Client, beta: Client
) -> None:
    """Two stalled uploads of alpha's fill its share (max_uploads_per_tenant = 2): a third
    gets 429 naming the key. beta may still upload one (max_uploads = 3), then no one
    may. Once the stalled uploads are cut off, uploads work again."""
    held = []
    try:
        for tenant in ("alpha", "alpha", "beta"):
            reader, writer = await connect(alpha)
            writer.write(b"PUT /v1/modules HTTP/1.1\r\nHost: x\r\n" + auth(tenant)
                         + b"Content-Type: application/wasm\r\nContent-Length: 100\r\n\r\n"
                         + b"\x00asm")
            await writer.drain()
            held.append((reader, writer))
        await wait_uploads(alpha.daemon, 3)
        wasm = module("noop")
        for client, key in ((alpha, "max_uploads_per_tenant"), (beta, "max_uploads")):
            body = await client.json("PUT", "/v1/modules", 429, data=wasm,
                                     headers={"Content-Type": "application/wasm"})
            assert key in body["error"], body
        for reader, _ in held:
            assert (await until_closed(reader)).startswith(b"HTTP/1.1 408")
    finally:
        for _, writer in held:
            writer.close()
    await alpha.upload(module("noop"))
    await beta.upload(module("noop"))


async def wait_uploads(daemon: Daemon, count: int) -> None:
    """Wait until the daemon has this many uploads in progress."""
    assert daemon.api is not None
    await daemon.api.uploads.wait_until(count, within_s=10)


async def test_many_slowloris_connections_are_all_cut_off(alpha: Client) -> None:
    """The attack as reported: many connections trickling request heads. Every one is
    closed, and the API answers other clients all the while."""
    held = []
    try:
        for _ in range(100):
            reader, writer = await connect(alpha)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            held.append((reader, writer))
        await asyncio.gather(*(w.drain() for _, w in held))
        closing = asyncio.gather(*(until_closed(r) for r, _ in held))
        await still_serving(alpha)
        await alpha.json("GET", "/v1/jobs", 200)
        assert await closing == [b""] * len(held)
    finally:
        for _, writer in held:
            writer.close()


async def test_idle_keep_alive_connection_outlives_the_header_timeout(alpha: Client) -> None:
    """A kept-alive connection waiting for its next request is not a slow head: it stays
    open past server.header_timeout_s (closing it then would race a client reusing
    it) and serves the next request; server.idle_timeout_s closes it later."""
    reader, writer = await connect(alpha)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b'{"status": "ok"}'
    try:
        writer.write(request)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(len(body)) == body
        peek = asyncio.ensure_future(reader.read(1))
        done, _ = await asyncio.wait([peek], timeout=2 * HEADER_TIMEOUT_S)
        assert not done, "the idle connection was closed at the header timeout"
        writer.write(request)
        head = await peek + await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert await reader.readexactly(len(body)) == body
        assert await until_closed(reader) == b""  # then closed by the idle timeout
    finally:
        writer.close()


async def test_connection_that_sends_nothing_is_closed(alpha: Client) -> None:
    reader, writer = await connect(alpha)
    try:
        assert await until_closed(reader) == b""
    finally:
        writer.close()
