"""``GET /v1/jobs/export``: every record of the caller's tenant as flat CSV or
NDJSON rows, equal to the records, filtered, and streamed at a steady memory."""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import json
import os
import random
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from poold.agent.usage import peak_rss, reset_peak_rss
from poold.api.export import export_jobs
from poold.ctl.common import EXIT_REFUSED
from poold.daemon import Daemon
from poold.jobs.model import Job, JobState, Limits, OffsetRange
from poold.jobs.store import MemoryJobStore
from poold.protocol import Usage
from poold.types import ModuleHash, PodName, TenantName, new_job_id
from tests.support.daemon import TOKENS, Client, DaemonFactory
from tests.support.wasm_fixtures import module

MIB = 2**20
OBJECTS = ("limits", "input", "output", "usage", "waiting")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def synthetic(tenant: str, i: int, rng: random.Random) -> Job:
    """A record as the scheduler would leave it, with varied values."""
    state = rng.choice(list(JobState))
    terminal = state.terminal
    started = state in {JobState.RUNNING} or (terminal and rng.random() < 0.9)
    submitted = T0 + timedelta(milliseconds=i)
    offsets = OffsetRange(f"p.{tenant}.out", i % 4, i, i + rng.randint(0, 3))
    usage = None
    if terminal and started:
        usage = Usage(
            cpu_ms=round(rng.uniform(0.01, 900), 3), memory_peak_bytes=65536 * rng.randint(1, 99),
            rss_peak_bytes=rng.randint(30, 300) * MIB,
            fuel_consumed=rng.choice([None, rng.randint(1, 10**9)]),
            stdin_records=rng.randint(0, 9), stdin_bytes=rng.randint(0, 999),
            stdout_records=rng.randint(0, 9), stdout_bytes=rng.randint(0, 999),
            stderr_bytes=rng.randint(0, 99), artifacts_bytes=rng.randint(0, 9999),
        )
    return Job(
        id=new_job_id(), tenant=TenantName(tenant), module=ModuleHash("ab" * 32),
        module_size=100, limits=Limits(timeout_s=rng.choice([0.5, 20.0]), memory_mb=64,
                                       fuel=rng.choice([None, 10**9])),
        args=tuple(rng.choice([(), ("a", 'q"uote,comma'), ("ünï\ncode",)])),
        env=tuple(rng.choice([(), (("K", "v, w"),)])),
        state=state, exit_code=rng.choice([None, 0, 3]) if terminal else None,
        error=rng.choice([None, 'it said "no", then\nstopped']) if terminal else None,
        pod=PodName(f"poold-w-{i:06d}") if state is not JobState.QUEUED else None,
        warm=rng.choice([True, False]) if state is not JobState.QUEUED else None,
        output=offsets if state is not JobState.QUEUED else None,
        artifacts=(("a.txt", 5),) if terminal and rng.random() < 0.2 else (),
        submitted_at=submitted,
        assigned_at=submitted + timedelta(microseconds=700) if started else None,
        started_at=submitted + timedelta(microseconds=900) if started else None,
        finished_at=submitted + timedelta(milliseconds=3) if terminal else None,
        usage=usage,
    )


async def load(daemon: Daemon, tenant: str, n: int, *, seed: int = 1) -> list[Job]:
    rng = random.Random(seed)
    jobs = [synthetic(tenant, i, rng) for i in range(n)]
    for start in range(0, n, 2000):
        await asyncio.gather(*(daemon.store.put(j) for j in jobs[start:start + 2000]))
    return jobs


async def export(client: Client, fmt: str, **params: str) -> tuple[str, str]:
    async with client.request("GET", "/v1/jobs/export", params={"format": fmt, **params}) as r:
        assert r.status == 200, await r.text()
        return r.headers["Content-Type"], await r.text()


def current_rss() -> int:
    with open("/proc/self/status") as f:
        found = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.MULTILINE)
    assert found is not None
    return int(found.group(1)) * 1024


def rows_of(fmt: str, text: str) -> list[dict[str, Any]]:
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    return [json.loads(line) for line in text.splitlines()]


def expected_columns(record: dict[str, Any]) -> dict[str, Any]:
    """The record flattened, written independently of poold.jobs.export."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key in OBJECTS:
            subs = value or {}
            for sub in subs:
                flat[f"{key}_{sub}"] = subs[sub]
        else:
            flat[key] = value
    return flat


def same(fmt: str, cell: Any, value: Any) -> bool:
    if isinstance(value, list | dict):
        return bool(json.loads(cell) == value)
    if fmt == "ndjson":
        return bool(cell == value)
    if value is None:
        return bool(cell == "")
    if isinstance(value, bool):
        return bool(cell == ("true" if value else "false"))
    if isinstance(value, int | float):
        return float(cell) == value
    return bool(cell == value)


def check_row(fmt: str, row: dict[str, Any], record: dict[str, Any]) -> None:
    want = expected_columns(record)
    listing = "artifact_count" in want  # the listing's short form of the artifact list
    if listing:
        assert len(json.loads(row["artifacts"])) == want.pop("artifact_count")
        assert want.pop("artifacts_url") == f"/v1/jobs/{row['id']}/artifacts"
    for column, value in want.items():
        assert column in row, f"column {column} missing from the export"
        assert same(fmt, row[column], value), (column, row[column], value)
    # objects that are null in this record still have their (empty) columns
    # the listing leaves out the artifact lists; the export has them
    short = {"artifacts", "artifacts_dropped"} if listing else set()
    extra = {c for c in row if c not in want and c not in short}
    assert all(c.split("_", 1)[0] in OBJECTS for c in extra), extra
    assert all(row[c] in ("", None) for c in extra), {c: row[c] for c in extra}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
async def test_an_export_of_10000_records_equals_the_records(
    start_daemon: DaemonFactory, session: aiohttp.ClientSession, fmt: str,
) -> None:
    daemon = await start_daemon(pool__min_idle=1, state__fsync="false")
    alpha = Client(daemon, session, "alpha")
    real = await alpha.run(module("upper"), input=["one", "two"])
    assert real["state"] == "succeeded"
    await load(daemon, "alpha", 9_999)
    records: dict[str, dict[str, Any]] = {}
    path: str | None = "/v1/jobs?limit=1000"
    while path:
        page = await alpha.json("GET", path, 200)
        records.update((r["id"], r) for r in page["jobs"])
        path = page["next"]
    assert len(records) == 10_000

    content_type, text = await export(alpha, fmt)
    assert content_type.startswith("text/csv" if fmt == "csv" else "application/x-ndjson")
    rows = rows_of(fmt, text)
    assert len(rows) == 10_000
    assert rows[0]["id"] == real["id"]  # oldest first
    assert {r["id"] for r in rows} == set(records)
    for row in rows:
        check_row(fmt, row, records[row["id"]])
    with_files = [r for r in rows if r["artifacts"] not in ("[]", "")][:20]
    assert with_files
    for row in with_files:  # the full record's artifact list, not just its count
        record = await alpha.json("GET", f"/v1/jobs/{row['id']}", 200)
        check_row(fmt, row, record)
    usage_columns = {c for c in rows[0] if c.startswith("usage_")}
    assert usage_columns == {f"usage_{f}" for f in Usage.names()}


async def test_another_tenants_jobs_never_appear(alpha: Client, beta: Client) -> None:
    mine = await alpha.run(module("upper"), input=["a"])
    theirs = await beta.run(module("upper"), input=["b"])
    cancelled = await beta.json("POST", "/v1/jobs", 202,
                                json={"module": theirs["module"], "input": ["x"]})
    for fmt in ("csv", "ndjson"):
        _, text = await export(alpha, fmt)
        rows = rows_of(fmt, text)
        assert [r["id"] for r in rows] == [mine["id"]]
        assert theirs["id"] not in text and cancelled["id"] not in text
        _, text = await export(beta, fmt)
        assert mine["id"] not in text
        assert {r["id"] for r in rows_of(fmt, text)} == {theirs["id"], cancelled["id"]}


async def test_filters_on_time_and_state(daemon: Daemon, alpha: Client) -> None:
    jobs = await load(daemon, "alpha", 300, seed=7)
    since, until = T0 + timedelta(milliseconds=100), T0 + timedelta(milliseconds=200)
    _, text = await export(alpha, "ndjson", since="2026-01-01T00:00:00.100Z",
                           until="2026-01-01T00:00:00.200+00:00")
    want = [j.id for j in jobs if since <= j.submitted_at < until]
    assert [r["id"] for r in rows_of("ndjson", text)] == want and len(want) == 100

    _, text = await export(alpha, "csv", state="failed,timed_out", since="2026-01-01")
    got = rows_of("csv", text)
    assert [r["id"] for r in got] == [
        j.id for j in jobs if j.state in {JobState.FAILED, JobState.TIMED_OUT}]
    async with alpha.request("GET", "/v1/jobs/export?state=queued&state=running") as r:
        lines = (await r.text()).splitlines()
    assert len(lines) - 1 == sum(j.state in {JobState.QUEUED, JobState.RUNNING} for j in jobs)

    _, text = await export(alpha, "csv", until="2025-12-31T23:59:59Z")
    assert text.count("\n") == 1  # the header alone


@pytest.mark.parametrize(("query", "says"), [
    ("format=xml", "format must be csv or ndjson"),
    ("since=yesterday", "since must be an RFC 3339 time"),
    ("until=2026-13-01", "until must be an RFC 3339 time"),
    ("state=done", "unknown state 'done'; states are queued"),
    ("since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "until must be later than since"),
])
async def test_bad_filters_get_a_400_that_says_why(alpha: Client, query: str, says: str) -> None:
    body = await alpha.json("GET", f"/v1/jobs/export?{query}", 400)
    assert body["error"].startswith(says), body


async def test_the_export_needs_a_token(alpha: Client) -> None:
    async with alpha.session.get(alpha.base + "/v1/jobs/export") as r:
        assert r.status == 401


@pytest.mark.timeout(600)
async def test_100000_records_stream_at_a_steady_memory(session: aiohttp.ClientSession) -> None:
    """The export route as the daemon serves it, over a real HTTP connection, on a
    store of 100,000 records (no daemon: its journal would only slow the set-up)."""
    store = MemoryJobStore()
    rng = random.Random(3)
    for i in range(100_000):
        await store.put(synthetic("alpha", i, rng))
    await store.put(synthetic("beta", 0, rng))

    async def handler(request: web.Request) -> web.StreamResponse:
        return await export_jobs(request, store=store, tenant=TenantName("alpha"))

    app = web.Application()
    app.router.add_get("/v1/jobs/export", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rows = size = 0
    try:
        gc.collect()
        before = current_rss()
        reset_peak_rss()  # VmHWM := the RSS now
        async with session.get(f"http://127.0.0.1:{port}/v1/jobs/export",
                               params={"format": "ndjson"}) as r:
            assert r.status == 200
            async for chunk in r.content.iter_chunked(64 * 1024):
                size += len(chunk)
                rows += chunk.count(b"\n")
        peak = peak_rss()
    finally:
        await runner.cleanup()
    assert peak is not None
    assert rows == 100_000
    grew = peak - before
    # the body is far larger than what the server and the client held at once
    assert size > 50 * MIB, size
    assert grew < 16 * MIB, f"RSS grew {grew / MIB:.1f} MiB to stream {size / MIB:.0f} MiB"


async def _cli(*args: str, token: str, url: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poold", "jobs", "export", "--url", url, *args,
        env={**os.environ, "POOLD_TOKEN": token},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_poold_jobs_export_writes_a_file_or_stdout(
    alpha: Client, beta: Client, tmp_path: Path,
) -> None:
    mine = await alpha.run(module("upper"), input=["a"])
    theirs = await beta.run(module("upper"), input=["b"])
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    target = out_dir / "jobs.csv"
    code, _, err = await _cli("-o", str(target), token=TOKENS["alpha"], url=alpha.base)
    assert code == 0, err
    rows = rows_of("csv", target.read_text())
    assert [r["id"] for r in rows] == [mine["id"]]
    assert rows[0]["usage_stdout_records"] == "1"
    code, out, err = await _cli("--format", "ndjson", "--state", "succeeded",
                                token=TOKENS["beta"], url=beta.base)
    assert code == 0, err
    assert [r["id"] for r in rows_of("ndjson", out.decode())] == [theirs["id"]]

    code, out, err = await _cli("--since", "yesterday", "-o", str(out_dir / "bad.csv"),
                                token=TOKENS["alpha"], url=alpha.base)
    assert code == EXIT_REFUSED, err
    assert b"since must be an RFC 3339 time" in err
    assert [p.name for p in out_dir.iterdir()] == ["jobs.csv"]  # nothing partial left
