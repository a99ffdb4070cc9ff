"""Nothing accepted is lost: crashes at each step, restarts, retries, draining,
retention and a broker outage."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from poold.api import app
from poold.data.embedded import EmbeddedBroker
from poold.faults import POINTS
from tests.support.daemon import Client, DaemonFactory, wait_done
from tests.support.procs import working_in
from tests.support.serve import HEADERS, PooldProcess, serve_env
from tests.support.wasm_fixtures import module


async def _follow_to_end(session: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    async with session.get(f"{url}/v1/jobs/{job_id}/output?follow=true", headers=HEADERS) as r:
        await r.read()
    async with session.get(f"{url}/v1/jobs/{job_id}", headers=HEADERS) as r:
        assert r.status == 200
        job: dict[str, Any] = await r.json()
    return job


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def poold_process(tmp_path: Path, broker: str) -> AsyncIterator[PooldProcess]:
    process = PooldProcess(serve_env(tmp_path, broker))
    try:
        yield process
    finally:
        await process.close()


@pytest.fixture
async def own_broker(
    start_daemon: DaemonFactory, session: aiohttp.ClientSession
) -> AsyncIterator[tuple[EmbeddedBroker, Client]]:
    """A broker of the test's own, to stop and start, and alpha's client of a daemon
    on it that gives up on Kafka after 2 s."""
    broker = EmbeddedBroker()
    await broker.start()
    try:
        daemon = await start_daemon(kafka__bootstrap=broker.bootstrap,
                                    kafka__request_timeout_s=2)
        yield broker, Client(daemon, session, "alpha")
    finally:
        await broker.stop()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("point", sorted(POINTS))
async def test_crash_at_each_step_ends_every_job_exactly_once(
    point: str, poold_process: PooldProcess, http: aiohttp.ClientSession
) -> None:
    poold = poold_process
    env = poold.env
    await poold.start(crash_at=point)
    # a module that is still running when poold dies at "delivered"/"running"
    long_running = point in {"delivered", "running"}
    wasm = module("ticker") if long_running else module("upper")
    args = ["20"] if long_running else []
    records = ["alpha", "beta", "gamma"]
    async with http.put(poold.url + "/v1/modules", data=wasm, headers=HEADERS) as r:
        sha = (await r.json())["sha256"]
    body = {"module": sha, "args": args, "input": [] if long_running else records}
    key = {"Idempotency-Key": f"crash-{point}"}
    job_id = None
    try:
        async with http.post(poold.url + "/v1/jobs", json=body,
                             headers={**HEADERS, **key}) as r:
            job_id = (await r.json())["id"]
        await _follow_to_end(http, poold.url, job_id)
    except (aiohttp.ClientError, OSError):
        pass  # poold died under the request
    assert await poold.died() == -signal.SIGKILL

    await poold.start()  # "serving" is logged once recovery is done
    # the client retries the submission it may not have seen answered: same job
    async with http.post(poold.url + "/v1/jobs", json=body, headers={**HEADERS, **key}) as r:
        assert r.status == 200, await r.text()
        again = await r.json()
    if job_id is not None:
        assert again["id"] == job_id
    job = await _follow_to_end(http, poold.url, again["id"])
    async with http.get(poold.url + "/v1/jobs", headers=HEADERS) as r:
        listed = (await r.json())["jobs"]
    assert [j["id"] for j in listed] == [again["id"]], "exactly one job was accepted"

    assert job["state"] in {"succeeded", "error"}, job
    if point in {"accepted", "assigned", "result", "recycling"}:
        assert job["state"] == "succeeded", job
    if point == "assigned":
        assert job["input"] is not None
    if job["state"] == "succeeded":
        async with http.get(f"{poold.url}/v1/jobs/{job['id']}/output", headers=HEADERS) as r:
            lines = (await r.text()).splitlines()
        expected = [f"tick {i}" for i in range(1, 21)] if long_running else [
            s.upper() for s in records]
        assert lines == expected, "output records missing or duplicated"
    else:
        assert "may have started" in job["error"]

    await poold.stop()
    slots = Path(env["POOLD_SLOTS__ROOT"])
    assert not [p for p in slots.iterdir() if p.name.startswith("poold-w-")], "slots left"
    assert not working_in(slots), "worker processes left"


@pytest.mark.timeout(180)
async def test_a_requeued_job_gets_a_fresh_output_range(
    poold_process: PooldProcess, http: aiohttp.ClientSession, start_daemon: DaemonFactory,
    broker: str,
) -> None:
    """A job requeued after a crash at ``assigned`` must not keep the output range it
    was given before: another job of the tenant may write to that partition before
    it runs, and its output would then begin with the other job's lines."""
    poold = poold_process
    await poold.start(crash_at="assigned")
    async with http.put(poold.url + "/v1/modules", data=module("upper"), headers=HEADERS) as r:
        sha = (await r.json())["sha256"]
    try:
        async with http.post(poold.url + "/v1/jobs", headers=HEADERS,
                             json={"module": sha, "input": ["mine 1", "mine 2"]}) as r:
            assert r.status == 202
            job_id = (await r.json())["id"]
    except (aiohttp.ClientError, OSError):
        pytest.fail("poold died before answering the submission")
    assert await poold.died() == -signal.SIGKILL

    # meanwhile another job of the tenant writes to the same topics (another poold
    # on the same broker and topic prefix, as a replica taking over would)
    other = await start_daemon(pool__min_idle=1,
                               kafka__topic_prefix=poold.env["POOLD_KAFKA__TOPIC_PREFIX"])
    intruder = await Client(other, http, "alpha").run(module("upper"), input=["intruder"])
    assert intruder["state"] == "succeeded", intruder
    await other.stop()

    await poold.start()
    job = await _follow_to_end(http, poold.url, job_id)
    assert job["state"] == "succeeded", job
    assert job["output"]["partition"] == intruder["output"]["partition"], (
        "the requeued job must use the partition the other job wrote to, or this test "
        f"shows nothing: {job['output']} vs {intruder['output']}")
    async with http.get(f"{poold.url}/v1/jobs/{job_id}/output", headers=HEADERS) as r:
        assert (await r.text()).splitlines() == ["MINE 1", "MINE 2"]
    # the range in the record is the contract (a consumer of the topic reads by it),
    # and the API's reader skips other jobs' records by key: read the range raw
    out = job["output"]
    held = await _records(broker, out["topic"], out["partition"], out["start"], out["end"])
    assert held == [b"MINE 1", b"MINE 2"], (out, intruder["output"])
    await poold.stop()


async def _records(broker: str, topic: str, partition: int, start: int, end: int) -> list[bytes]:
    """Every record of ``[start, end)`` of a partition, whoever wrote it."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False,
                                request_timeout_ms=10_000)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        found: list[bytes] = []
        async with asyncio.timeout(30):
            while start + len(found) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                found += [m.value for m in batch.get(tp, []) if m.offset < end]
        return found
    finally:
        await consumer.stop()


async def test_idempotency_key_gives_one_job(alpha: Client) -> None:
    sha = await alpha.upload(module("noop"))
    first = await alpha.json("POST", "/v1/jobs", 202, json={"module": sha},
                             headers={"Idempotency-Key": "k-1"})
    second = await alpha.json("POST", "/v1/jobs", 200, json={"module": sha},
                              headers={"Idempotency-Key": "k-1"})
    other = await alpha.json("POST", "/v1/jobs", 202, json={"module": sha},
                             headers={"Idempotency-Key": "k-2"})
    assert second["id"] == first["id"]
    assert other["id"] != first["id"]
    listed = await alpha.json("GET", "/v1/jobs", 200)
    assert len(listed["jobs"]) == 2


async def test_concurrent_retries_with_one_key_give_one_job(alpha: Client) -> None:
    sha = await alpha.upload(module("noop"))

    async def post() -> dict[str, Any]:
        async with alpha.request("POST", "/v1/jobs", json={"module": sha},
                                 headers={"Idempotency-Key": "same"}) as r:
            assert r.status in (200, 202)
            body: dict[str, Any] = await r.json()
            return body

    results = await asyncio.gather(*(post() for _ in range(5)))
    assert len({r["id"] for r in results}) == 1


async def test_module_upload_honours_idempotency_key(alpha: Client) -> None:
    wasm = module("noop")
    headers = {"Idempotency-Key": "upload-1", "Content-Type": "application/wasm"}
    async with alpha.request("PUT", "/v1/modules", data=wasm, headers=headers) as r:
        assert r.status == 201
        first = await r.json()
    async with alpha.request("PUT", "/v1/modules", data=wasm, headers=headers) as r:
        assert r.status == 201, "a retried upload gets the answer of the first"
        assert await r.json() == first


async def test_module_idempotency_keys_are_bounded(
    alpha: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """poold remembers the last MODULE_KEYS_KEPT keys, not every key forever: the
    oldest is forgotten (its repeat is an ordinary 200), the newest still replays."""
    monkeypatch.setattr(app, "MODULE_KEYS_KEPT", 2)
    wasm = module("noop")

    async def put(key: str) -> tuple[int, str | None]:
        headers = {"Idempotency-Key": key, "Content-Type": "application/wasm"}
        async with alpha.request("PUT", "/v1/modules", data=wasm, headers=headers) as r:
            return r.status, r.headers.get("Idempotent-Replayed")

    first = await put("bound-1")
    assert first[1] is None
    assert await put("bound-2") == (200, None)
    assert await put("bound-3") == (200, None)
    assert await put("bound-3") == (200, "true")
    assert await put("bound-1") == (200, None), "the oldest key was kept beyond the bound"


async def test_restart_requeues_queued_jobs_in_order(start_daemon: DaemonFactory,
                                                     session: aiohttp.ClientSession) -> None:
    daemon = await start_daemon(pool__min_idle=1, pool__max_pods=1)
    client = Client(daemon, session, "alpha")
    # the only worker is busy with a long job, so the next ones stay queued
    busy = await client.submit(await client.upload(module("ticker")), args=["1000"])
    async with client.request("GET", f"/v1/jobs/{busy['id']}/output?follow=true") as r:
        assert await r.content.readline() == b"tick 1\n"
    sha = await client.upload(module("upper"))
    ids = [(await client.submit(sha, input=[f"job {i}"]))["id"] for i in range(3)]
    assert all(daemon.store.get(i).state.value == "queued" for i in ids)  # type: ignore[union-attr]
    state_dir = daemon.settings.state.dir
    await daemon.stop()

    again = await start_daemon(
        pool__min_idle=1, pool__max_pods=1, state__dir=str(state_dir),
        slots__root=str(daemon.settings.slots.root),
        kafka__topic_prefix=daemon.settings.kafka.topic_prefix,
    )
    client = Client(again, session, "alpha")
    interrupted = await wait_done(again, busy["id"])
    assert interrupted.state.value == "error", "a job that ran is not run again"
    assert interrupted.error is not None and "may have started" in interrupted.error
    finished = [await wait_done(again, i) for i in ids]
    assert [j.state.value for j in finished] == ["succeeded"] * 3
    started = [j.started_at for j in finished]
    assert started == sorted(started), "recovered jobs keep their order"  # type: ignore[type-var]
    for i, job_id in enumerate(ids):
        assert await client.text(f"/v1/jobs/{job_id}/output") == f"JOB {i}\n"


async def test_finished_jobs_expire_with_410(start_daemon: DaemonFactory,
                                             session: aiohttp.ClientSession) -> None:
    daemon = await start_daemon(retention__finished_jobs_s=0.001)
    client = Client(daemon, session, "alpha")
    job = await client.run(module("artifacts"))
    assert job["state"] == "succeeded"
    assert await daemon.expire_finished() == 1
    for path in ("", "/output", "/logs", "/artifacts", "/artifacts/hello.txt"):
        async with client.request("GET", f"/v1/jobs/{job['id']}{path}") as r:
            assert r.status == 410
            assert "retention" in (await r.json())["error"]
    assert not daemon.files.dir(job["id"]).exists()  # type: ignore[union-attr]
    beta = Client(daemon, session, "beta")
    async with beta.request("GET", f"/v1/jobs/{job['id']}") as r:
        assert r.status == 404, "another tenant still learns nothing"


async def test_drain_refuses_new_work_and_lets_running_jobs_finish(
    alpha: Client, daemon: Any
) -> None:
    sha = await alpha.upload(module("ticker"))
    job = await alpha.submit(sha, args=["10"])
    async with alpha.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
        assert await r.content.readline() == b"tick 1\n"
        drained = asyncio.create_task(daemon.drain())
        async with alpha.request("POST", "/v1/jobs", json={"module": sha}) as refused:
            assert refused.status == 503
            assert refused.headers["Retry-After"]
            assert "shutting down" in (await refused.json())["error"]
        await r.read()
    await drained
    final = await wait_done(daemon, job["id"])
    assert final.state.value == "succeeded"


async def test_broker_outage_gives_503_and_recovers(
    own_broker: tuple[EmbeddedBroker, Client]
) -> None:
    broker, client = own_broker
    sha = await client.upload(module("upper"))
    await broker.stop()
    async with client.request("POST", "/v1/jobs", json={"module": sha}) as r:
        assert r.status == 503
        assert "Kafka" in (await r.json())["error"]
    assert (await client.json("GET", "/v1/jobs", 200))["jobs"] == [], "nothing half-accepted"
    await broker.start()  # same port, empty: poold makes its topics again
    job = await client.run(module("upper"), input=["back"])
    assert job["state"] == "succeeded", job
    assert await client.text(f"/v1/jobs/{job['id']}/output") == "BACK\n"


async def test_output_read_in_a_broker_outage_ends_with_an_error_not_a_hang(
    own_broker: tuple[EmbeddedBroker, Client]
) -> None:
    """The soak's "stall": a followed output whose Kafka read failed after the 200 had
    gone out was answered with a 503 written into the open body, and its client
    waited for the rest until its own timeout (aiohttp's 300 s; curl for ever)."""
    broker, client = own_broker
    job = await client.run(module("ticker"), args=["3"])
    assert job["state"] == "succeeded", job
    await broker.stop()
    async with asyncio.timeout(60):  # before the fix: no answer before the client gives up
        # nothing sent yet: a plain read is answered 503, to be retried
        async with client.request("GET", f"/v1/jobs/{job['id']}/output") as r:
            assert r.status == 503, await r.text()
            assert r.headers["Retry-After"]
            assert "Kafka" in (await r.json())["error"]
        # a follow answers 200 at once; its read failing later cuts the body short
        async with client.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()


async def test_full_queue_answers_429_and_stores_nothing(
    start_daemon: DaemonFactory, session: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(pool__min_idle=1, pool__max_pods=1,
                                tenants__alpha__max_queued_jobs=2)
    client = Client(daemon, session, "alpha")
    busy = await client.submit(await client.upload(module("ticker")), args=["1000"])
    async with client.request("GET", f"/v1/jobs/{busy['id']}/output?follow=true") as r:
        assert await r.content.readline() == b"tick 1\n"
    sha = await client.upload(module("noop"))
    for _ in range(2):
        await client.submit(sha)
    async with client.request("POST", "/v1/jobs", json={"module": sha}) as r:
        assert r.status == 429
        assert r.headers["Retry-After"]
        assert "max_queued_jobs" in (await r.json())["error"]
    listed = await client.json("GET", "/v1/jobs", 200)
    assert len(listed["jobs"]) == 3, "the refused job was not stored"
    await client.json("DELETE", f"/v1/jobs/{busy['id']}", 200)


async def test_agents_can_be_found_by_their_slot(daemon: Any) -> None:
    """The leftover check above must be able to see a live worker."""
    root = daemon.settings.slots.root.resolve()
    assert len(working_in(root)) >= daemon.settings.pool.min_idle
