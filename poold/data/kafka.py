"""Kafka through aiokafka: topics per tenant, input and output ranges.

A job owns one partition of its tenant's input topic and one of its output
topic while it lives (see :mod:`poold.data.leases`), so its records are simply
the offsets ``[start, end)`` of those partitions: no topic is created or
deleted per job. Errors leave this module as :class:`DataUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from tenacity import AsyncRetrying

from poold.config import RetrySettings
from poold.errors import DataError
from poold.retry import RetryPolicy

log = structlog.get_logger(__name__)

MAX_BATCH_BYTES = 512 * 1024
MAX_RECORD_BYTES = 900 * 1024
"""The largest record poold takes or makes: an input record at submit, a line the
module writes to stdout. Kafka's default limits (the broker's message.max.bytes,
a topic's max.message.bytes, the producer's max.request.size) are about 1 MiB
per record batch with its overhead; this stays below them, so every broker
takes it without configuration and a record is never cut or split."""
READ_FETCH_WAIT_MS = 10
"""How long the broker may hold a fetch of poold's readers that finds nothing.
Readers only ask for ranges whose records are known to be there (the agent
reports its acknowledged output end), so a fetch that waits is one that ran
past the data: aiokafka's prefetch beyond a range, or the read-forward of
:meth:`DataPlane.end_offset`. Kafka's default (500 ms) would sit in the way of
the next read on that consumer."""
END_PROBE_MS = 50
"""How long the read-forward of an unknown partition end waits for a record."""
MAX_IDLE_READERS = 64


class DataUnavailable(DataError):
    """Kafka could not be reached or refused a request; the message says which."""

    retriable = True


def topic_names(prefix: str, tenant: str) -> tuple[str, str]:
    return f"{prefix}.{tenant}.in", f"{prefix}.{tenant}.out"


def _temporary(error: BaseException) -> bool:
    return isinstance(error, (KafkaError, OSError, TimeoutError))


class RecordTooLarge(DataError, ValueError):
    """A record over :data:`MAX_RECORD_BYTES`; callers check before (the API at
    submit, the agent per stdout line), so this is a last guard, never a split."""


def check_record(record: bytes) -> bytes:
    if len(record) > MAX_RECORD_BYTES:
        raise RecordTooLarge(
            f"a record of {len(record)} bytes is over the maximum of {MAX_RECORD_BYTES}")
    return record


class DataPlane:
    """poold's side: create topics, write a job's input, read its output."""

    def __init__(
        self,
        bootstrap: str,
        *,
        replication_factor: int = 1,
        request_timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self._rf = replication_factor
        self._timeout_ms = int(request_timeout_s * 1000)
        self._retry = retry or RetryPolicy.of(RetrySettings(), attempts=3)
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._next: dict[tuple[str, int], int] = {}
        self._healthy_until = 0.0
        self._finding: dict[tuple[str, int], asyncio.Future[int]] = {}
        self._checking: asyncio.Future[bool] | None = None
        self._idle_consumers: list[AIOKafkaConsumer] = []
        self._wanted: tuple[list[str], int] = ([], 1)

    def _retrying(self, what: str) -> AsyncRetrying:
        return self._retry.retrying(what=what, retriable=_temporary, log=log)

    async def start(self) -> None:
        if self._producer is not None:
            return
        common: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "request_timeout_ms": self._timeout_ms,
        }
        try:
            self._admin = AIOKafkaAdminClient(**common)
            await self._admin.start()
            self._producer = AIOKafkaProducer(acks="all", linger_ms=0, **common)
            await self._producer.start()
        except (KafkaError, OSError) as e:
            await self.stop()
            raise DataUnavailable(
                f"cannot reach Kafka at {self.bootstrap} (kafka.bootstrap): {e}"
            ) from e

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        finding = list(self._finding.values())
        for task in finding:
            task.cancel()
        if finding:
            # each closes the consumer it borrowed as it ends
            await asyncio.wait(finding)
        idle, self._idle_consumers = self._idle_consumers, []
        for consumer in idle:
            await _stop_quietly(consumer)
        admin, self._admin = self._admin, None
        if producer is not None:
            await producer.stop()
        if admin is not None:
            await admin.close()

    async def __aenter__(self) -> DataPlane:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def check(self) -> bool:
        """Is the broker answering? A metadata round trip within the request
        timeout (a refused connection fails at once), trusted for a second; a
        burst of submissions shares one check in flight."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._healthy_until:
            return True
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self._probe())
        return await asyncio.shield(self._checking)

    async def _probe(self) -> bool:
        loop = asyncio.get_running_loop()
        if self._admin is None:
            return False
        try:
            async with asyncio.timeout(self._timeout_ms / 1000):
                topics = set(await self._admin.list_topics())
                wanted, partitions = self._wanted
                if not set(wanted) <= topics:
                    # a broker that lost its data (or a new one): make the topics again
                    log.warning("topics missing on the broker; creating them again")
                    await self.ensure_topics(wanted, partitions=partitions)
                    self._next.clear()
        except (KafkaError, OSError, TimeoutError, DataUnavailable):
            return False
        self._healthy_until = loop.time() + 1.0
        return True

    async def ensure_topics(self, names: Sequence[str], *, partitions: int) -> None:
        """Create the topics that are missing; existing ones are left as they are."""
        assert self._admin is not None
        self._wanted = (list(names), partitions)
        try:
            async for attempt in self._retrying("listing or creating topics"):
                with attempt:
                    existing = set(await self._admin.list_topics())
                    missing = [n for n in names if n not in existing]
                    if missing:
                        try:
                            await self._admin.create_topics(
                                [NewTopic(n, partitions, self._rf) for n in missing]
                            )
                        except TopicAlreadyExistsError:
                            pass  # someone else made them: their ends are not known
                        else:
                            # a topic we made is empty: the first job of each
                            # partition need not ask the broker where it ends
                            for name in missing:
                                for partition in range(partitions):
                                    self._next.setdefault((name, partition), 0)
                        log.info("created topics", topics=missing, partitions=partitions)
            async for attempt in self._retrying("reading the topics' partitions"):
                with attempt:
                    await self._wait_partitions(names, partitions)
        except (KafkaError, OSError, TimeoutError) as e:
            raise DataUnavailable(f"cannot create topics {list(names)} in Kafka: {e}") from e

    async def _wait_partitions(self, names: Sequence[str], partitions: int) -> None:
        assert self._producer is not None
        for name in names:
            found = await self._producer.partitions_for(name)
            if len(found) < partitions:
                log.warning(
                    "topic has fewer partitions than configured",
                    topic=name, found=len(found), configured=partitions,
                )

    async def end_offset(self, topic: str, partition: int) -> int:
        """The offset the next record of this partition will get.

        Known from the last job's records where possible (and 0 for a topic
        poold created); otherwise asked of the broker and checked by reading
        forward, because a broker may report the high watermark of a batch
        rather than of its last record (Tansu does). Unknown ends are read in
        parallel, each on a pooled consumer: the first use of many partitions
        at once must not queue behind one another.
        """
        key = (topic, partition)
        known = self._next.get(key)
        if known is not None:
            return known
        finding = self._finding.get(key)
        if finding is None:
            finding = asyncio.ensure_future(self._find_end(topic, partition))
            self._finding[key] = finding
            finding.add_done_callback(lambda _: self._finding.pop(key, None))
        return await asyncio.shield(finding)

    async def _find_end(self, topic: str, partition: int) -> int:
        tp = TopicPartition(topic, partition)
        try:
            async for attempt in self._retrying(f"reading the end of {topic}/{partition}"):
                with attempt:
                    consumer = await self._checkout()
                    reusable = False
                    try:
                        end = int((await consumer.end_offsets([tp]))[tp])
                        consumer.assign([tp])
                        consumer.seek(tp, end)
                        while True:
                            batch = await consumer.getmany(tp, timeout_ms=END_PROBE_MS)
                            records = batch.get(tp, [])
                            if not records:
                                break
                            end = records[-1].offset + 1
                        reusable = True
                    finally:
                        await self._checkin(consumer, reusable=reusable)
                    self._next.setdefault((topic, partition), end)
                    return self._next[(topic, partition)]
        except (KafkaError, OSError, TimeoutError) as e:
            raise DataUnavailable(f"cannot read the end of {topic}/{partition}: {e}") from e
        raise AssertionError("unreachable")

    def note_end(self, topic: str, partition: int, end: int | None) -> None:
        """A job released this partition; ``end`` is its next offset, None if unknown."""
        if end is None:
            self._next.pop((topic, partition), None)
        else:
            self._next[(topic, partition)] = end

    async def produce(
        self, topic: str, partition: int, records: Sequence[bytes], *, key: bytes | None = None
    ) -> tuple[int, int]:
        """Append ``records`` contiguously; returns their offsets ``[start, end)``.

        The partition is leased to one job, so nobody else writes between our
        batches; if a failed attempt left records behind, the whole sequence is
        written again and the range points at the complete copy.
        """
        assert self._producer is not None
        pieces = [check_record(record) for record in records]
        try:
            async for attempt in self._retrying(f"writing input records to {topic}/{partition}"):
                with attempt:
                    start, end = await self._produce_once(topic, partition, pieces, key)
                    self._next[(topic, partition)] = end
                    return start, end
        except (KafkaError, OSError, TimeoutError) as e:
            raise DataUnavailable(f"cannot write input records to {topic}/{partition}: {e}") from e
        raise AssertionError("unreachable")

    async def _produce_once(
        self, topic: str, partition: int, records: Sequence[bytes], key: bytes | None
    ) -> tuple[int, int]:
        assert self._producer is not None
        start: int | None = None
        expected: int | None = None
        i = 0
        while i < len(records):
            batch = self._producer.create_batch()
            n = 0
            while i < len(records):
                if batch.append(key=key, value=records[i], timestamp=None) is None:
                    if n == 0:
                        raise DataUnavailable("an input record is larger than a Kafka batch")
                    break
                i += 1
                n += 1
                if batch.size() >= MAX_BATCH_BYTES:
                    break
            batch.close()
            future = await self._producer.send_batch(batch, topic, partition=partition)
            meta = await future
            base = int(meta.offset)
            if expected is not None and base != expected:
                raise KafkaError(f"input batch landed at {base}, expected {expected}")
            if start is None:
                start = base
            expected = base + n
        if start is None or expected is None:
            end = await self.end_offset(topic, partition)
            return end, end
        return start, expected

    async def _checkout(self) -> AIOKafkaConsumer:
        """A started consumer from the pool: starting one costs a connection and a
        metadata round trip, too much to pay per output request."""
        if self._idle_consumers:
            return self._idle_consumers.pop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            request_timeout_ms=self._timeout_ms,
            fetch_max_wait_ms=READ_FETCH_WAIT_MS,
        )
        starting = asyncio.ensure_future(consumer.start())
        try:
            await asyncio.shield(starting)
        except BaseException:
            # A start cancelled mid-bootstrap leaves aiokafka's bootstrap connection
            # open for the collector: let it end (within the request timeout), then stop.
            await asyncio.wait({starting})
            await _stop_quietly(consumer)
            raise
        return consumer

    async def _checkin(self, consumer: AIOKafkaConsumer, *, reusable: bool) -> None:
        if reusable and self._producer is not None and len(self._idle_consumers) < MAX_IDLE_READERS:
            consumer.assign([])
            self._idle_consumers.append(consumer)
        else:
            await _stop_quietly(consumer)

    async def read(
        self, topic: str, partition: int, start: int, end: int, *, key: bytes | None = None
    ) -> AsyncIterator[bytes]:
        """Records of one job's range ``[start, end)`` (only those keyed ``key``).

        Callers ask only for records known to be there (a finished job's range,
        or a running job's output up to the end its agent reported), so no
        fetch waits for records to arrive; a consumer is borrowed from the pool
        for the read and given back at once. For the same reason a reader that
        fails, or that Kafka leaves without a record for ``kafka.request_timeout_s``
        (a broker slow under load), is a temporary failure: the read goes on from
        the next record on a fresh reader, as the retry policy allows (``kafka.retries``
        attempts), before it gives up with :class:`DataUnavailable`.
        """
        position = start
        failures = 0
        while position < end:
            try:
                async with contextlib.aclosing(
                        self._read_from(TopicPartition(topic, partition), position, end)) as found:
                    async for offset, record_key, value in found:
                        position = offset + 1
                        if key is None or record_key == key:
                            yield value
                return
            except (KafkaError, OSError, TimeoutError) as e:
                failures += 1
                if self._retry.attempts is not None and failures >= self._retry.attempts:
                    raise DataUnavailable(f"cannot read {topic}/{partition}: {e}") from e
                pause = self._retry.delay(failures)
                self._retry.log_retry(log, what=f"reading {topic}/{partition} from {position}",
                                      attempt=failures + 1, error=e, pause_s=pause)
                await asyncio.sleep(pause)

    async def _read_from(
        self, tp: TopicPartition, start: int, end: int
    ) -> AsyncGenerator[tuple[int, bytes | None, bytes], None]:
        """Each record of ``[start, end)`` as (offset, key, value), on one borrowed reader;
        TimeoutError if Kafka returns none for ``kafka.request_timeout_s``."""
        consumer = await self._checkout()
        reusable = False
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            loop = asyncio.get_running_loop()
            give_up = loop.time() + self._timeout_ms / 1000
            position = start
            while position < end:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=1000)
                if not batch.get(tp):
                    if loop.time() > give_up:
                        raise TimeoutError(
                            f"Kafka returned none of records {position}..{end} within "
                            f"{self._timeout_ms / 1000:g} s (kafka.request_timeout_s): the "
                            "broker is down or slow, or the records expired by the topic's "
                            "retention")
                    continue
                give_up = loop.time() + self._timeout_ms / 1000
                for message in batch[tp]:
                    if message.offset >= end:
                        position = end
                        break
                    position = message.offset + 1
                    yield message.offset, message.key, message.value
            reusable = True
        finally:
            await self._checkin(consumer, reusable=reusable)


async def _stop_quietly(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer; aiokafka may raise CancelledError from stop() when the
    consumer has only just started (aio-libs/aiokafka#647). Only a real
    cancellation of this task is passed on."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


class AgentData:
    """The agent's side: read a job's input range, append its output lines.

    The producer is connected while the worker is idle (the agent calls
    :meth:`prepare_output` once it is ready), so a job's first output line
    never waits for a connection; it sends each record at once (linger 0).
    A job without input never makes a consumer. ``on_acked`` hears the offset
    after each acknowledged output record: the agent reports it to poold, which
    then reads a running job's output without waiting in a Kafka fetch.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        request_timeout_s: float = 10.0,
        on_acked: Callable[[int], None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self._timeout_ms = int(request_timeout_s * 1000)
        self._producer: asyncio.Task[AIOKafkaProducer] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._last: asyncio.Future[Any] | None = None
        self._errors: list[BaseException] = []
        self._on_acked = on_acked
        self.records = 0
        self.acked_end: int | None = None
        """The offset after the last acknowledged output record of this job."""

    def begin_job(self) -> None:
        """Forget the previous job's output (a worker may serve several)."""
        self._last = None
        self._errors = []
        self.records = 0
        self.acked_end = None

    def _common(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap, "request_timeout_ms": self._timeout_ms}

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(acks="all", linger_ms=0, **self._common())
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    def prepare_output(self) -> None:
        """Start connecting the producer now, in the background."""
        if self._producer is None:
            self._producer = asyncio.create_task(self._start_producer(), name="kafka-producer")

    async def _producer_ready(self) -> AIOKafkaProducer:
        failed = self._producer is not None and self._producer.done() and (
            self._producer.cancelled() or self._producer.exception() is not None)
        if failed:
            self._producer = None  # connected while idle and failed: try again now
        self.prepare_output()
        assert self._producer is not None
        try:
            return await asyncio.shield(self._producer)
        except (KafkaError, OSError) as e:
            raise DataUnavailable(f"cannot reach Kafka at {self.bootstrap}: {e}") from e

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.cancel()
            # wait for it without taking its end as ours: its own failure or
            # cancellation ends here, a cancellation of this call goes on
            await asyncio.wait({producer})
            if not producer.cancelled() and producer.exception() is None:
                await producer.result().stop()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await _stop_quietly(consumer)

    async def fetch(
        self, topic: str, partition: int, start: int, end: int, *, key: bytes | None = None
    ) -> list[bytes]:
        tp = TopicPartition(topic, partition)
        out: list[bytes] = []
        position = start
        try:
            if self._consumer is None:
                self._consumer = AIOKafkaConsumer(enable_auto_commit=False, **self._common())
                await self._consumer.start()
            self._consumer.assign([tp])
            self._consumer.seek(tp, start)
            while position < end:
                batch = await self._consumer.getmany(tp, timeout_ms=1000)
                for m in batch.get(tp, []):
                    if start <= m.offset < end and (key is None or m.key == key):
                        out.append(m.value)
                    position = max(position, m.offset + 1)
        except (KafkaError, OSError) as e:
            raise DataUnavailable(f"cannot read input from {topic}/{partition}: {e}") from e
        return out

    async def append(
        self, topic: str, partition: int, line: bytes, *, key: bytes | None = None
    ) -> None:
        producer = await self._producer_ready()
        try:
            self._last = await producer.send(
                topic, check_record(line), key=key, partition=partition)
            self._last.add_done_callback(self._check)
            self.records += 1
        except (KafkaError, OSError) as e:
            raise DataUnavailable(f"cannot write output to {topic}/{partition}: {e}") from e

    def _check(self, sent: asyncio.Future[Any]) -> None:
        if sent.cancelled():
            return
        error = sent.exception()
        if error is not None:
            self._errors.append(error)
            return
        end = int(sent.result().offset) + 1
        if self.acked_end is None or end > self.acked_end:
            self.acked_end = end
            if self._on_acked is not None:
                self._on_acked(end)

    async def flush(self) -> int | None:
        """Wait for every output record; the offset after the last one, if any."""
        if self._last is None:
            return None
        try:
            meta = await self._last
        except (KafkaError, OSError) as e:
            raise DataUnavailable(f"output records were not acknowledged by Kafka: {e}") from e
        if self._errors:
            raise DataUnavailable(
                f"{len(self._errors)} output records were not acknowledged by Kafka: "
                f"{self._errors[0]}"
            )
        return int(meta.offset) + 1
