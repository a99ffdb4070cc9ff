"""poold.client against a real poold: every route, errors, streams, retries, deadlines.

One daemon serves the whole file (module-scoped loop). The sync client runs in
a worker thread (it has its own loop; the daemon needs this one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from poold.client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    JobState,
    JobWaitTimeout,
    NotFound,
    RequestTimeout,
    RetryPolicy,
    Unauthorized,
)
from poold.daemon import Daemon
from tests.support.daemon import TOKENS, make_settings, serving, until_running
from tests.support.wasm_fixtures import FIXTURES, module

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

FAST_RETRY = RetryPolicy(attempts=4, backoff_s=0.01, backoff_max_s=0.05)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(tmp_path_factory: pytest.TempPathFactory, broker: str
                 ) -> AsyncIterator[Daemon]:
    async with serving(make_settings(tmp_path_factory.mktemp("client"), broker)) as served:
        yield served[0]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(daemon: Daemon) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(daemon.url, TOKENS["alpha"], retry=FAST_RETRY) as c:
        yield c


# -- every route -------------------------------------------------------------------------


async def test_run_returns_the_record_and_the_output(client: AsyncClient) -> None:
    result = await client.run(FIXTURES / "upper.wasm", input=["hello", "world"], timeout_s=10)
    assert result.ok
    assert result.output == ["HELLO", "WORLD"]
    assert result.job.state == JobState.SUCCEEDED and result.job.exit_code == 0
    assert result.job.limits["timeout_s"] == 10
    assert result.job.record["output"]["end"] - result.job.record["output"]["start"] == 2
    assert result.job.finished_at is not None and result.job.started_at is not None


async def test_upload_says_whether_the_module_was_new(client: AsyncClient) -> None:
    wasm = module("echoenv")
    first = await client.upload_module(wasm)
    again = await client.upload_module(wasm)
    assert (first.created, again.created) == (True, False)
    assert first.sha256 == again.sha256 and first.size == len(wasm)


async def test_every_job_route(client: AsyncClient, tmp_path: Path) -> None:
    sha = (await client.upload_module(module("artifacts"))).sha256
    submitted = await client.submit(sha, args=["x", "y z"], env={"A": "1"})
    assert submitted.state == JobState.QUEUED
    job = await client.wait(submitted.id, timeout=30)
    assert job.succeeded, job
    assert (await client.get_job(job.id)).record == job.record
    assert job.id in [j.id for j in await client.list_jobs(limit=None)]
    assert await client.output(job.id) == ["wrote artifacts"]
    assert await client.logs(job.id) == ""
    listing = await client.list_artifacts(job.id)
    assert {(a.name, a.size) for a in listing} == {("hello.txt", 16), ("sub/args.txt", 6)}
    assert await client.get_artifact(job.id, "sub/args.txt") == b"x y z\n"
    saved = await client.download_artifact(job.id, "sub/args.txt", tmp_path)
    assert saved == tmp_path / "sub" / "args.txt" and saved.read_bytes() == b"x y z\n"
    with pytest.raises(NotFound, match="no artifact named"):
        await client.get_artifact(job.id, "missing.txt")
    with pytest.raises(Conflict) as ended:
        await client.cancel(job.id)
    assert ended.value.status == 409
    assert ended.value.message == "the job already ended (succeeded); nothing to cancel"


async def test_pool_health_readiness_metrics(client: AsyncClient, daemon: Daemon) -> None:
    pool = await client.pool()
    assert pool.record == daemon.pool.figures()  # type: ignore[union-attr]
    assert pool.max == daemon.settings.pool.max_pods
    assert await client.health() is True
    assert await client.ready() is True
    assert "poold_pool_workers" in await client.metrics()
    assert "/v1/pool" in (await client.openapi())["paths"]


async def test_jobs_are_listed_newest_first_across_pages(client: AsyncClient) -> None:
    sha = (await client.upload_module(module("noop"))).sha256
    ids = [(await client.submit(sha)).id for _ in range(5)]
    await asyncio.gather(*(client.wait(i, timeout=30) for i in ids))
    paged = [j.id async for j in client.iter_jobs(page_size=2)]
    assert paged[:5] == ids[::-1]
    assert len(paged) == len(set(paged))
    assert [j.id for j in await client.list_jobs(limit=3)] == ids[::-1][:3]


async def test_state_filter(client: AsyncClient) -> None:
    sha = (await client.upload_module(module("exitcode"))).sha256
    failed = await client.wait((await client.submit(sha, args=["3"])).id, timeout=30)
    assert failed.state == JobState.FAILED and failed.exit_code == 3
    found = await client.list_jobs(limit=None, state="failed")
    assert failed.id in [j.id for j in found]
    assert {j.state for j in found} == {"failed"}


async def test_a_session_of_the_callers_is_used_and_left_open(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as session:
        async with AsyncClient(daemon.url, TOKENS["alpha"], session=session) as c:
            assert (await c.pool()).max == daemon.settings.pool.max_pods  # token sent
        assert not session.closed


# -- errors carry the status and the server's sentence -------------------------------------


async def test_errors_carry_status_and_sentence(client: AsyncClient, daemon: Daemon) -> None:
    with pytest.raises(NotFound) as missing:
        await client.get_job("j-" + "0" * 32)
    assert (missing.value.status, missing.value.message) == (404, "no such job")
    with pytest.raises(BadRequest) as refused:
        await client.upload_module(b"not wasm at all")
    assert refused.value.status == 400 and "wasm" in refused.value.message
    async with AsyncClient(daemon.url, "a-wrong-token") as wrong:
        with pytest.raises(Unauthorized) as denied:
            await wrong.pool()
    assert denied.value.message == "the bearer token is not valid for any tenant"
    assert "a-wrong-token" not in str(denied.value)
    assert "a-wrong-token" not in repr(wrong)


async def test_wait_gives_up_at_its_timeout(client: AsyncClient, daemon: Daemon) -> None:
    sha = (await client.upload_module(module("ticker"))).sha256
    job = await client.submit(sha, timeout_s=60)
    await until_running(daemon, job.id)
    with pytest.raises(JobWaitTimeout, match="still running"):
        await client.wait(job.id, timeout=0.2)
    assert (await client.cancel(job.id)).state == JobState.CANCELLED


# -- streaming -----------------------------------------------------------------------------


async def test_async_streams_follow_a_running_job_until_it_ends(
    client: AsyncClient, daemon: Daemon
) -> None:
    sha = (await client.upload_module(module("ticker"))).sha256
    job = await client.submit(sha, timeout_s=60)
    output = client.stream_output(job.id)
    logs = client.stream_logs(job.id)
    assert await anext(output) == "tick 1"
    first_logs = await anext(logs)
    assert first_logs.startswith("log 1\n")
    assert (await client.get_job(job.id)).state == JobState.RUNNING
    await client.cancel(job.id)
    rest = [line async for line in output]
    rest_logs = "".join([chunk async for chunk in logs])
    ended = await client.get_job(job.id)
    assert ended.state == JobState.CANCELLED
    every = ["tick 1", *rest]
    assert every == [f"tick {i}" for i in range(1, len(every) + 1)]
    assert every == await client.output(job.id)
    assert first_logs + rest_logs == await client.logs(job.id)


async def test_sync_client_streams_follow_a_running_job(
    client: AsyncClient, daemon: Daemon
) -> None:
    sha = (await client.upload_module(module("ticker"))).sha256
    job = await client.submit(sha, timeout_s=60)
    first_seen = asyncio.Event()
    loop = asyncio.get_running_loop()

    def follow() -> tuple[list[str], str]:
        with Client(daemon.url, TOKENS["alpha"]) as sync:
            lines = []
            for line in sync.stream_output(job.id):
                lines.append(line)
                if len(lines) == 1:
                    loop.call_soon_threadsafe(first_seen.set)
            return lines, "".join(sync.stream_logs(job.id))

    following = asyncio.ensure_future(asyncio.to_thread(follow))
    async with asyncio.timeout(30):
        await first_seen.wait()
    assert (await client.get_job(job.id)).state == JobState.RUNNING
    await client.cancel(job.id)
    async with asyncio.timeout(30):
        lines, logs = await following
    assert lines == [f"tick {i}" for i in range(1, len(lines) + 1)]
    assert lines == await client.output(job.id)
    assert logs == await client.logs(job.id)


async def test_sync_client_covers_the_same_calls(daemon: Daemon, tmp_path: Path) -> None:
    def script() -> dict[str, Any]:
        with Client(daemon.url, TOKENS["beta"]) as c:
            result = c.run(module("artifacts"), args=["a"])
            return {
                "state": result.job.state,
                "jobs": [j.id for j in c.list_jobs()],
                "artifacts": [a.name for a in c.list_artifacts(result.job.id)],
                "saved": c.download_artifact(result.job.id, "hello.txt", tmp_path).read_text(),
                "pool": c.pool().max,
                "id": result.job.id,
            }

    got = await asyncio.to_thread(script)
    assert got["state"] == "succeeded"
    assert got["jobs"] == [got["id"]]  # beta sees only its own job
    assert got["artifacts"] == ["hello.txt", "sub/args.txt"]
    assert got["saved"] == "hello from wasm\n"
    assert got["pool"] == daemon.settings.pool.max_pods


# -- retries and deadlines, through a real HTTP hop that misbehaves on purpose ----------------


class Hop:
    """An HTTP proxy in front of poold that can lose answers, fail or hang."""

    def __init__(self, target: str) -> None:
        self.target = target
        #: per request: None = forward, "drop" = forward but lose the answer,
        #: "503" = answer 503 without forwarding, "hang" = never answer
        self.plan: list[str | None] = []
        self.seen: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._release = asyncio.Event()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._runner is not None and self._session is not None
        self._release.set()
        await self._runner.cleanup()
        await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        step = self.plan.pop(0) if self.plan else None
        self.seen.append(f"{request.method} {request.path} {step}")
        if step == "503":
            return web.json_response({"error": "try later"}, status=503,
                                     headers={"Retry-After": "0"})
        if step == "hang":
            await self._release.wait()
            return web.json_response({"error": "released at the end of the test"}, status=503)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._session.request(request.method, self.target + request.path_qs,
                                         data=body, headers=headers) as r:
            payload = await r.read()
            if step == "drop":
                assert request.transport is not None
                request.transport.close()  # the answer is lost on the way back
            return web.Response(body=payload, status=r.status,
                                content_type=r.content_type)


@pytest_asyncio.fixture(loop_scope="module")
async def hop(daemon: Daemon) -> AsyncIterator[Hop]:
    proxy = Hop(daemon.url)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_a_lost_submit_answer_is_retried_into_the_same_job(
    hop: Hop, daemon: Daemon
) -> None:
    async with AsyncClient(hop.url, TOKENS["beta"], retry=FAST_RETRY) as c:
        sha = (await c.upload_module(module("noop"))).sha256
        before = {j.id for j in await c.list_jobs(limit=None)}
        hop.plan = ["drop"]
        job = await c.submit(sha)
        after = {j.id for j in await c.list_jobs(limit=None)}
    assert hop.seen[-3:-1] == ["POST /v1/jobs drop", "POST /v1/jobs None"]
    assert after - before == {job.id}, "the retry made a second job"


async def test_a_lost_cancel_answer_still_cancels_once(hop: Hop, daemon: Daemon) -> None:
    """DELETE is not retried by our policy, but aiohttp repeats it on a broken
    connection (RFC 9112); the repeat's 409 must not turn a done cancel into an error."""
    async with AsyncClient(hop.url, TOKENS["beta"], retry=FAST_RETRY) as c:
        job = await c.submit((await c.upload_module(module("ticker"))).sha256, timeout_s=60)
        await until_running(daemon, job.id)
        hop.plan = ["drop"]
        assert (await c.cancel(job.id)).state == JobState.CANCELLED
        deletes = [s for s in hop.seen if s.startswith("DELETE")]
        assert deletes[0] == f"DELETE /v1/jobs/{job.id} drop" and len(deletes) <= 2
        with pytest.raises(Conflict):
            await c.cancel((await c.wait((await c.submit(
                (await c.upload_module(module("noop"))).sha256)).id, timeout=30)).id)


async def test_temporary_failures_of_a_get_are_retried(hop: Hop) -> None:
    async with AsyncClient(hop.url, TOKENS["beta"], retry=FAST_RETRY) as c:
        hop.plan = ["503", "503"]
        assert (await c.pool()).max > 0
        assert hop.seen == ["GET /v1/pool 503"] * 2 + ["GET /v1/pool None"]
        hop.plan = ["503"] * 4
        with pytest.raises(Exception, match="try later") as gave_up:
            await c.pool()
        assert getattr(gave_up.value, "status", None) == 503


async def test_a_call_that_gets_no_answer_ends_at_its_timeout(hop: Hop) -> None:
    async with AsyncClient(hop.url, TOKENS["beta"], timeout=0.3, retry=FAST_RETRY) as c:
        hop.plan = ["hang"]
        with pytest.raises(RequestTimeout, match=r"no answer within 0\.3 s"):
            await c.pool()


async def test_an_unreachable_server_is_a_connection_error() -> None:
    policy = RetryPolicy(attempts=2, backoff_s=0.01)
    async with AsyncClient("http://127.0.0.1:9", "t", retry=policy) as c:
        with pytest.raises(ConnectionFailed, match=r"cannot connect to http://127\.0\.0\.1:9"):
            await c.pool()


# -- the notebook example of docs/client.md, at its real size ---------------------------------


@pytest.mark.timeout(300)  # 100 jobs through 6 workers: ~20 s alone, minutes on a busy host
async def test_notebook_example_runs_100_jobs(daemon: Daemon) -> None:
    def notebook() -> list[dict[str, Any]]:
        with Client(daemon.url, TOKENS["alpha"]) as c:
            results = c.run_many(
                FIXTURES / "upper.wasm",
                [{"input": [f"sample {i}"], "args": [str(i)]} for i in range(100)],
                concurrency=8,
            )
            return [{"id": r.job.id, "state": r.job.state, "output": r.output,
                     "run_ms": r.job.run_ms, "args": r.job.args} for r in results]

    rows = await asyncio.to_thread(notebook)
    assert len(rows) == 100 and len({r["id"] for r in rows}) == 100
    for i, row in enumerate(rows):
        assert row["state"] == "succeeded", row
        assert row["output"] == [f"SAMPLE {i}"]
        assert row["args"] == [str(i)]



async def test_following_the_log_of_a_queued_job_ends_when_it_is_cancelled(
    client: AsyncClient, daemon: Daemon
) -> None:
    """A job cancelled before it ran never gets a log; following it must still end."""
    sha = (await client.upload_module(module("ticker"))).sha256
    quota = daemon.settings.tenants["alpha"].max_concurrent_jobs
    busy = [await client.submit(sha, timeout_s=60) for _ in range(quota)]
    try:
        waiting = await client.submit(sha, timeout_s=60)
        assert (await client.get_job(waiting.id)).state == JobState.QUEUED
        headers = {"Authorization": f"Bearer {TOKENS['alpha']}", "Accept": "text/event-stream"}
        async with aiohttp.ClientSession() as http, http.get(
            f"{daemon.url}/v1/jobs/{waiting.id}/logs", headers=headers
        ) as following:  # the headers are here: the server is following the log
            await client.cancel(waiting.id)
            async with asyncio.timeout(10):
                body = await following.text()
        assert body == "event: end\ndata: cancelled\n\n"
    finally:
        await asyncio.gather(*(client.cancel(job.id) for job in busy))


# -- every route is reachable from the client and the command line ----------------------------

#: route -> (the client's method, the command line's verb); the browser's pages are not API
ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/healthz"): ("health", "api"),
    ("GET", "/readyz"): ("ready", "api"),
    ("GET", "/metrics"): ("metrics", "api"),
    ("GET", "/openapi.json"): ("openapi", "api"),
    ("PUT", "/v1/modules"): ("upload_module", "modules upload"),
    ("GET", "/v1/modules"): ("list_modules", "modules list"),
    ("POST", "/v1/jobs"): ("submit", "run"),
    ("GET", "/v1/jobs"): ("list_jobs", "jobs list"),
    ("GET", "/v1/jobs/export"): ("stream_export", "jobs export"),
    ("GET", "/v1/jobs/{id}"): ("get_job", "jobs get"),
    ("DELETE", "/v1/jobs/{id}"): ("cancel", "jobs cancel"),
    ("GET", "/v1/jobs/{id}/output"): ("stream_output", "output"),
    ("GET", "/v1/jobs/{id}/logs"): ("stream_logs", "logs"),
    ("GET", "/v1/jobs/{id}/artifacts"): ("list_artifacts", "artifacts"),
    ("GET", "/v1/jobs/{id}/artifacts/{name}"): ("get_artifact", "artifacts"),
    ("GET", "/v1/pool"): ("pool", "pool show"),
    ("PUT", "/v1/pool"): ("tune_pool", "pool set"),
    ("GET", "/v1/runtimes"): ("list_runtimes", "runtimes list"),
}
BROWSER_PAGES = {"/", "/console", "/console/", "/console/{name}"}


def _served_routes(daemon: Daemon) -> set[tuple[str, str]]:
    runner = daemon._runner  # the app the daemon really serves
    assert runner is not None
    found = set()
    for route in runner.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        path = path.replace("{name:.+}", "{name}")
        if route.method != "HEAD" and path not in BROWSER_PAGES:
            found.add((route.method, path))
    return found


def _documented_routes() -> set[tuple[str, str]] | None:
    import json

    import poold.api

    document = Path(poold.api.__file__).parent / "openapi.json"
    if not document.is_file():
        return None
    paths = json.loads(document.read_text())["paths"]
    return {(method.upper(), path) for path, ops in paths.items() for method in ops
            if method in {"get", "put", "post", "delete", "patch"} and path not in BROWSER_PAGES}


def _resolves(verb: str) -> bool:
    import click

    from poold.cli import main

    command: click.Command | None = main
    for word in verb.split():
        assert isinstance(command, click.Group)
        command = command.get_command(click.Context(main), word)
    return command is not None


async def test_every_route_has_a_client_method_and_a_command(daemon: Daemon) -> None:
    served = _served_routes(daemon)
    documented = _documented_routes() or set()
    missing = sorted((served | documented) - set(ROUTES))
    assert not missing, f"routes neither the client nor the CLI covers: {missing}"
    for (method, path), (name, verb) in ROUTES.items():
        if (method, path) not in served | documented:
            continue  # a route another branch adds; checked once it is served
        assert callable(getattr(AsyncClient, name, None)), f"AsyncClient.{name} for {path}"
        assert callable(getattr(Client, name, None)), f"Client.{name} for {path}"
        assert _resolves(verb), f"poold {verb} for {method} {path}"


async def test_sync_client_works_where_a_loop_already_runs(daemon: Daemon) -> None:
    """A Jupyter cell runs inside an event loop; asyncio.run would refuse there."""

    def notebook_kernel() -> int:
        async def cell() -> int:
            with Client(daemon.url, TOKENS["alpha"]) as c:
                return c.pool().max  # a blocking call, while this thread's loop runs

        return asyncio.run(cell())

    assert await asyncio.to_thread(notebook_kernel) == daemon.settings.pool.max_pods
