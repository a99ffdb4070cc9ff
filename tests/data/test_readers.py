"""poold's Kafka side stops what it started: no connection is left to the collector."""

from __future__ import annotations

import asyncio
import gc
import secrets
import warnings
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs
from structlog.typing import EventDict

from poold.data.kafka import DataPlane
from poold.retry import RetryPolicy

pytestmark = pytest.mark.timeout(120)


async def _stop_while_finding_ends(broker: str, delay: float) -> None:
    data = DataPlane(broker)
    await data.start()
    topic = f"readers-{secrets.token_hex(4)}"
    await data.ensure_topics([topic], partitions=8)
    data._next.clear()  # as after a restart: every partition's end is read from Kafka
    finding = [asyncio.ensure_future(data.end_offset(topic, p)) for p in range(8)]
    await asyncio.sleep(delay)
    await data.stop()
    await asyncio.wait(finding)


@pytest.mark.parametrize("delay", [0, 0.01, 0.03, 0.1])
def test_stopping_while_partition_ends_are_read_leaves_no_connection(
        broker: str, delay: float) -> None:
    """The daemon stops while the first jobs of many partitions ask Kafka where
    each ends, and its event loop then closes (as a test's does). Each of those
    reads borrowed a consumer: stop() must see them closed, or their sockets stay
    open until the collector finds them (a ResourceWarning in a later test)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(_stop_while_finding_ends(broker, delay))
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks


async def _collect(records: AsyncIterator[bytes]) -> list[bytes]:
    return [record async for record in records]


async def test_a_read_kafka_leaves_silent_goes_on_from_the_next_record(broker: str) -> None:
    """The broker, slow under load, returned nothing for a whole request timeout
    while a followed output was read: the read gave up, and the follow was cut (it
    hung before the API's fix). The records are known to be there, so silence is
    temporary: the read goes on from where it stopped, nothing read twice."""
    data = DataPlane(broker, request_timeout_s=1,
                     retry=RetryPolicy(attempts=3, backoff_s=0.1, backoff_max_s=0.1, jitter=0))
    await data.start()
    try:
        topic = f"readers-{secrets.token_hex(4)}"
        await data.ensure_topics([topic], partitions=1)
        first = [b"a0", b"a1", b"a2"]
        assert await data.produce(topic, 0, first) == (0, 3)
        retried = asyncio.Event()

        def note(_: object, __: str, event: EventDict) -> EventDict:
            if "trying again" in str(event.get("event")):
                retried.set()
            return event

        with capture_logs(processors=[note]):
            # records 3..6 are not there yet: Kafka stays silent, as a slow broker does
            reading = asyncio.ensure_future(_collect(data.read(topic, 0, 0, 6)))
            async with asyncio.timeout(30):
                await asyncio.wait({reading, asyncio.ensure_future(retried.wait())},
                                   return_when=asyncio.FIRST_COMPLETED)
            assert retried.is_set(), f"the read gave up: {reading.exception()!r}"
            assert await data.produce(topic, 0, [b"b0", b"b1", b"b2"]) == (3, 6)
            async with asyncio.timeout(30):
                got = await reading
        assert got == [*first, b"b0", b"b1", b"b2"]
    finally:
        await data.stop()
