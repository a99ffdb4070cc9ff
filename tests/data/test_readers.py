"""poold's Kafka side stops what it started: no connection is left to the collector."""

from __future__ import annotations

import asyncio
import gc
import secrets
import warnings

import pytest

from poold.data.kafka import DataPlane

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
