"""``GET /v1/jobs`` stays small whatever the jobs hold: a job's artifacts appear as a
count and a link (the list itself is at ``/v1/jobs/{id}/artifacts``), and a page
stops at ``server.max_page_kb`` even when ``limit`` would allow more jobs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from poold.daemon import Daemon
from tests.api.helpers import finish
from tests.support.daemon import Client, make_settings, serving
from tests.support.wasm_fixtures import module

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

MAX_PAGE_KB = 64


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, broker: str
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    settings = make_settings(tmp_path_factory.mktemp("listing"), broker,
                             server__max_page_kb=MAX_PAGE_KB)
    async with serving(settings) as served_:
        yield served_


@pytest.fixture(scope="module")
def alpha(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    return Client(served[0], served[1], "alpha")


@pytest.fixture(scope="module")
def beta(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    return Client(served[0], served[1], "beta")


async def test_listing_shows_an_artifact_count_and_link(alpha: Client) -> None:
    job = await alpha.submit(await alpha.upload(module("artifacts")), args=["x"])
    [done] = await finish(alpha, job["id"])
    assert len(done["artifacts"]) == 2, done  # the record itself still lists them

    [listed] = (await alpha.json("GET", "/v1/jobs?limit=1", 200))["jobs"]
    assert listed["id"] == job["id"]
    assert "artifacts" not in listed, listed
    assert listed["artifact_count"] == 2, listed
    link = listed["artifacts_url"]
    assert link == f"/v1/jobs/{job['id']}/artifacts", listed
    names = {a["name"] for a in (await alpha.json("GET", link, 200))["artifacts"]}
    assert names == {"hello.txt", "sub/args.txt"}, names


async def test_page_stops_at_its_byte_budget(beta: Client) -> None:
    """Three jobs of ~40 KB each (their args) do not fit one 64 KB page: each page holds
    what fits (at least one job), and ``next`` continues without losing any."""
    noop = await beta.upload(module("noop"))
    big = ["a" * 1000] * 40
    submitted = [(await beta.submit(noop, args=big))["id"] for _ in range(3)]
    await finish(beta, *submitted)

    seen: list[str] = []
    path: str | None = "/v1/jobs?limit=1000"
    pages = 0
    while path is not None:
        async with beta.request("GET", path) as r:
            assert r.status == 200, await r.text()
            raw = await r.read()
        assert len(raw) <= MAX_PAGE_KB * 1024, len(raw)
        page: dict[str, Any] = json.loads(raw)
        assert page["jobs"], page  # never an empty page with a next link
        seen.extend(j["id"] for j in page["jobs"])
        path = page["next"]
        pages += 1
        assert pages < 10, "pagination does not end"
    assert seen == submitted[::-1], seen
    assert pages >= 2, pages


async def test_a_job_larger_than_the_budget_still_gets_its_page(beta: Client) -> None:
    noop = await beta.upload(module("noop"))
    job = await beta.submit(noop, args=["b" * (MAX_PAGE_KB * 1024)])
    await finish(beta, job["id"])
    page = await beta.json("GET", "/v1/jobs?limit=5", 200)
    assert [j["id"] for j in page["jobs"]] == [job["id"]], page
    assert page["next"] is not None, page
