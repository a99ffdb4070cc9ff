"""Through HTTP, with a real broker, real agent processes and real WASI modules."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from poold.daemon import Daemon
from poold.types import PodName
from tests.support.daemon import Client, wait_done
from tests.support.procs import exists
from tests.support.wasm_fixtures import module


async def test_output_is_the_transform_of_the_input(alpha: Client, daemon: Daemon) -> None:
    records = ["hello", "world", "", "mixed Case 123"]
    job = await alpha.run(module("upper"), input=records)
    assert job["state"] == "succeeded", job
    assert job["exit_code"] == 0
    assert job["warm"] is True
    assert job["input"]["end"] - job["input"]["start"] == len(records)
    assert job["output"]["end"] - job["output"]["start"] == len(records)
    out = await alpha.text(f"/v1/jobs/{job['id']}/output")
    assert out.splitlines() == [r.upper() for r in records]
    logs = await alpha.text(f"/v1/jobs/{job['id']}/logs")
    assert logs == "upper: processed 4 lines\n"
    for key in ("submitted_at", "started_at", "finished_at"):
        assert job[key].endswith("Z") and len(job[key]) == len("2026-01-01T00:00:00.000000Z")
    assert job["wait_ms"] >= 0 and job["run_ms"] >= 0


async def test_output_of_consecutive_jobs_does_not_mix(alpha: Client) -> None:
    first = await alpha.run(module("upper"), input=["one", "two"])
    second = await alpha.run(module("upper"), input=["three"])
    assert (await alpha.text(f"/v1/jobs/{first['id']}/output")).splitlines() == ["ONE", "TWO"]
    assert (await alpha.text(f"/v1/jobs/{second['id']}/output")).splitlines() == ["THREE"]


async def test_worker_is_recycled_and_pool_refills(alpha: Client, daemon: Daemon) -> None:
    assert daemon.pool is not None and daemon.backend is not None
    pids = {w: daemon.backend.pid_of(w) for w in daemon.pool.workers}  # type: ignore[attr-defined]
    job = await alpha.run(module("noop"))
    assert job["state"] == "succeeded"
    pod = PodName(job["pod"])
    pid = pids[pod]
    assert pid is not None
    await daemon.pool.wait_until(
        lambda: pod not in daemon.pool.workers  # type: ignore[union-attr]
        and daemon.pool.figures()["idle"] == 2,  # type: ignore[union-attr]
        30,
    )
    assert not exists(pid), "the used worker's process is still running"
    assert not (daemon.settings.slots.root / pod).exists(), "the used slot was not removed"
    figures = await alpha.json("GET", "/v1/pool", 200)
    assert figures["idle"] == 2 and figures["busy"] == 0


async def test_artifacts_download(alpha: Client) -> None:
    job = await alpha.run(module("artifacts"), args=["x", "y z"])
    assert job["state"] == "succeeded", job
    listing = await alpha.json("GET", f"/v1/jobs/{job['id']}/artifacts", 200)
    names = {a["name"]: a["size"] for a in listing["artifacts"]}
    assert names == {"hello.txt": 16, "sub/args.txt": 6}
    assert await alpha.text(f"/v1/jobs/{job['id']}/artifacts/hello.txt") == "hello from wasm\n"
    assert await alpha.text(f"/v1/jobs/{job['id']}/artifacts/sub/args.txt") == "x y z\n"
    async with alpha.request("GET", f"/v1/jobs/{job['id']}/artifacts/../../etc/passwd") as r:
        assert r.status == 404


async def test_nonzero_exit_is_failed_with_its_code(alpha: Client) -> None:
    job = await alpha.run(module("exitcode"), args=["7"])
    assert job["state"] == "failed"
    assert job["exit_code"] == 7
    assert "code 7" in job["error"]
    assert "exiting with 7" in await alpha.text(f"/v1/jobs/{job['id']}/logs")


async def test_endless_loop_times_out(alpha: Client) -> None:
    job = await alpha.run(module("spin"), limits={"timeout_s": 0.5})
    assert job["state"] == "timed_out", job
    assert "time limit" in job["error"]
    assert 400 <= job["run_ms"] < 10_000


@pytest.mark.parametrize("name", ["growmem", "hog"])
async def test_memory_cap_ends_the_job_with_a_reason(alpha: Client, name: str) -> None:
    job = await alpha.run(module(name), limits={"memory_mb": 16})
    assert job["state"] == "failed", job
    assert "memory limit of 16 MiB" in job["error"]
    if name == "hog":
        # what the module itself reached (a message alone would pass with no cap at all)
        log = await alpha.text(f"/v1/jobs/{job['id']}/logs")
        reached = re.search(r"hog: allocation failed after ([0-9]+) MiB", log)
        assert reached is not None, log
        assert int(reached.group(1)) < 16, log


async def test_fuel_limit(alpha: Client) -> None:
    job = await alpha.run(module("spin"), limits={"fuel": 100_000})
    assert job["state"] == "failed", job
    assert "fuel" in job["error"]


async def test_args_env_and_nothing_of_the_host(alpha: Client) -> None:
    job = await alpha.run(module("echoenv"), args=["a b", "c"], env={"FOO": "bar"})
    out = (await alpha.text(f"/v1/jobs/{job['id']}/output")).splitlines()
    assert out[:2] == ["arg: a b", "arg: c"]
    assert "env: FOO=bar" in out
    assert not any(line.startswith("env: PATH=") for line in out), "host env leaked"
    assert "host: hidden" in out


async def test_cancel_stops_a_running_job(alpha: Client, daemon: Daemon) -> None:
    sha = await alpha.upload(module("ticker"))
    job = await alpha.submit(sha, limits={"timeout_s": 60})
    # wait for the first line of output, which proves the module is running
    async with alpha.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
        first = await r.content.readline()
        assert first == b"tick 1\n"
        cancelled = await alpha.json("DELETE", f"/v1/jobs/{job['id']}", 200)
        rest = await r.read()
    assert cancelled["state"] == "cancelled", cancelled
    final = await wait_done(daemon, job["id"])
    assert final.state.value == "cancelled"
    assert rest.count(b"tick") == (final.output.end - final.output.start) - 1  # type: ignore[union-attr]


async def test_follow_streams_output_and_logs_live(alpha: Client) -> None:
    sha = await alpha.upload(module("ticker"))
    job = await alpha.submit(sha, args=["5"])
    async with alpha.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
        body = await r.text()
    assert body.splitlines() == [f"tick {i}" for i in range(1, 6)]
    async with alpha.request(
        "GET", f"/v1/jobs/{job['id']}/logs", headers={"Accept": "text/event-stream"}
    ) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = await r.text()
    assert "data: log 5" in events
    assert "event: end\ndata: succeeded" in events


async def test_sse_log_is_live_while_running(alpha: Client, daemon: Daemon) -> None:
    sha = await alpha.upload(module("ticker"))
    job = await alpha.submit(sha, args=["40"])
    async with alpha.request(
        "GET", f"/v1/jobs/{job['id']}/logs", headers={"Accept": "text/event-stream"}
    ) as r:
        seen = b""
        while b"log 2" not in seen:
            seen += await r.content.readany()
        current = daemon.store.get(job["id"])
        assert current is not None and not current.state.terminal, "log was not live"
        await r.read()
    await wait_done(daemon, job["id"])


async def test_two_tenants_never_see_each_other(alpha: Client, beta: Client) -> None:
    a_job, b_job = await asyncio.gather(
        alpha.run(module("artifacts"), args=["from-alpha"]),
        beta.run(module("upper"), input=["from beta"]),
    )
    assert a_job["state"] == b_job["state"] == "succeeded"
    for path in ("", "/output", "/logs", "/artifacts", "/artifacts/hello.txt"):
        async with beta.request("GET", f"/v1/jobs/{a_job['id']}{path}") as r:
            assert r.status == 404
        async with alpha.request("GET", f"/v1/jobs/{b_job['id']}{path}") as r:
            assert r.status == 404
    a_ids = {j["id"] for j in (await alpha.json("GET", "/v1/jobs", 200))["jobs"]}
    b_ids = {j["id"] for j in (await beta.json("GET", "/v1/jobs", 200))["jobs"]}
    assert a_ids == {a_job["id"]} and b_ids == {b_job["id"]}
    assert a_job["input"] is None and b_job["output"]["topic"] != a_job["output"]["topic"]


async def test_cold_pool_starts_a_worker_per_job(start_daemon, session) -> None:  # type: ignore[no-untyped-def]
    daemon = await start_daemon(pool__min_idle=0)
    client = Client(daemon, session, "alpha")
    assert daemon.pool is not None and daemon.pool.figures()["idle"] == 0
    job = await client.run(module("upper"), input=["cold"])
    assert job["state"] == "succeeded"
    assert job["warm"] is False
    assert (await client.text(f"/v1/jobs/{job['id']}/output")) == "COLD\n"


async def test_metrics_count_jobs(alpha: Client) -> None:
    await alpha.run(module("noop"))
    text = await alpha.text("/metrics")
    assert 'poold_jobs_finished_total{state="succeeded",tenant="alpha"} 1.0' in text
    assert 'poold_job_starts_total{kind="warm"} 1.0' in text
    assert "poold_submit_to_start_seconds_bucket" in text
    assert 'poold_pool_workers{state="idle"}' in text


def _finished_counts(text: str, tenant: str) -> dict[str, float]:
    return {s.labels["state"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "poold_jobs_finished_total" and s.labels["tenant"] == tenant}


async def test_every_way_a_job_ends_frees_the_tenants_slot_and_is_counted(
    start_daemon, session  # type: ignore[no-untyped-def]
) -> None:
    """With ``max_concurrent_jobs = 1``, a job that is cancelled, fails, times out or
    loses its worker gives the tenant's slot back: the next job runs. And
    ``poold_jobs_finished_total`` counts each terminal state."""
    import signal

    daemon = await start_daemon(tenants__alpha__max_concurrent_jobs=1)
    client = Client(daemon, session, "alpha")
    assert daemon.backend is not None
    noop = await client.upload(module("noop"))
    ticker = await client.upload(module("ticker"))

    async def running_ticker() -> dict[str, Any]:
        job = await client.submit(ticker, limits={"timeout_s": 60})
        async with client.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
            assert await r.content.readline() == b"tick 1\n"
        return await client.json("GET", f"/v1/jobs/{job['id']}", 200)  # type: ignore[no-any-return]

    async def next_job_runs(after: str) -> None:
        job = await client.submit(noop)
        try:
            final = await wait_done(daemon, job["id"], timeout=30)
        except TimeoutError:
            pytest.fail(f"after a job that ended {after}, the tenant's next job did not run: "
                        f"{daemon.store.get(job['id'])}")
        assert final.state.value == "succeeded", final

    ended: dict[str, dict[str, Any]] = {}
    job = await running_ticker()
    await client.json("DELETE", f"/v1/jobs/{job['id']}", 200)
    ended["cancelled"] = await client.json("GET", f"/v1/jobs/{job['id']}", 200)
    await next_job_runs("cancelled")

    ended["failed"] = await client.run(module("exitcode"), args=["3"])
    await next_job_runs("failed")

    ended["timed_out"] = await client.run(module("spin"), limits={"timeout_s": 0.5})
    await next_job_runs("timed_out")

    job = await running_ticker()
    pid = daemon.backend.pid_of(PodName(job["pod"]))  # type: ignore[attr-defined]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    ended["error"] = (await wait_done(daemon, job["id"])).public()
    await next_job_runs("error")

    assert {state: job["state"] for state, job in ended.items()} == {
        state: state for state in ended}, ended
    counts = _finished_counts(await client.text("/metrics"), "alpha")
    assert counts == {"succeeded": 4, "failed": 1, "timed_out": 1, "cancelled": 1,
                      "error": 1}, counts


async def test_worker_dying_under_a_job_ends_it_as_error(alpha: Client, daemon: Daemon) -> None:
    import signal

    assert daemon.backend is not None
    assert daemon.pool is not None
    sha = await alpha.upload(module("ticker"))
    job = await alpha.submit(sha, limits={"timeout_s": 60})
    async with alpha.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
        assert await r.content.readline() == b"tick 1\n"
        record = await alpha.json("GET", f"/v1/jobs/{job['id']}", 200)
        pid = daemon.backend.pid_of(PodName(record["pod"]))  # type: ignore[attr-defined]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await r.read()
    final = await wait_done(daemon, job["id"])
    assert final.state.value == "error"
    assert final.error is not None
    assert "worker died" in final.error and "SIGKILL" in final.error
    await daemon.pool.wait_until(lambda: daemon.pool.figures()["idle"] == 2, 30)  # type: ignore[union-attr]
    text = await alpha.text("/metrics")
    assert 'poold_worker_failures_total{reason="busy_lost"} 1.0' in text


async def test_follow_returns_every_record_of_consecutive_jobs(alpha: Client) -> None:
    """A follow reads only what the agent reported as acknowledged; each job's
    stream must still hold all of its records, in order (10 records land in
    one Kafka batch, reported in pieces)."""
    sha = await alpha.upload(module("upper"))
    for n in range(4):
        records = [f"job {n} record {i} mixed Case" for i in range(10)]
        job = await alpha.submit(sha, input=records)
        async with alpha.request("GET", f"/v1/jobs/{job['id']}/output?follow=true") as r:
            body = await r.text()
        assert body.splitlines() == [x.upper() for x in records]
        record = await alpha.json("GET", f"/v1/jobs/{job['id']}", 200)
        assert record["state"] == "succeeded", "the follow ended before the job did"
