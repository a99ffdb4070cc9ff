"""The agent's Kafka side: stopping it never swallows the caller's cancellation."""

from __future__ import annotations

import asyncio

import pytest

from poold.data.kafka import AgentData

pytestmark = pytest.mark.timeout(30)


async def test_a_cancelled_stop_is_cancelled_while_the_producer_still_connects() -> None:
    """The agent stops its Kafka side on shutdown; if that shutdown is cancelled (a
    second signal, a deadline), stop() must end cancelled rather than carry on as
    if nothing happened."""
    connected = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()  # a broker that accepts and never answers
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    data = AgentData(f"127.0.0.1:{port}", request_timeout_s=20)
    data.prepare_output()
    producer = data._producer
    assert producer is not None
    try:
        await asyncio.wait_for(connected.wait(), 10)
        stopping = asyncio.create_task(data.stop())
        await asyncio.sleep(0)  # one turn of the loop: stop() now waits for the producer
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
    finally:
        await asyncio.wait({producer})
        server.close()
        await server.wait_closed()
