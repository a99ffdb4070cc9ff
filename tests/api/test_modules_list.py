"""``GET /v1/modules``: a tenant's own uploads, and never another tenant's.

Modules are stored once by content, so two tenants uploading the same bytes
share one file; each still sees only its own upload, with its own time.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import datetime

import aiohttp
import pytest
import pytest_asyncio

from poold.daemon import Daemon
from tests.api.helpers import finish
from tests.support.daemon import Client, make_settings, serving
from tests.support.wasm_fixtures import module, with_custom_section

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, broker: str
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    async with serving(make_settings(tmp_path_factory.mktemp("modlist"), broker)) as served_:
        yield served_


@pytest.fixture(scope="module")
def alpha(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    return Client(served[0], served[1], "alpha")


@pytest.fixture(scope="module")
def beta(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    return Client(served[0], served[1], "beta")


def unique(name: str) -> bytes:
    """A fixture module made unique by a custom section, so each test owns its bytes."""
    return with_custom_section(module(name), f"t-{secrets.token_hex(6)}", b"")


async def listing(client: Client) -> dict[str, dict[str, object]]:
    body = await client.json("GET", "/v1/modules", 200)
    return {m["sha256"]: m for m in body["modules"]}


async def test_lists_own_uploads_with_size_and_times(alpha: Client) -> None:
    first, second = unique("noop"), unique("upper")
    sha1 = await alpha.upload(first)
    sha2 = await alpha.upload(second)
    body = await alpha.json("GET", "/v1/modules", 200)
    order = [m["sha256"] for m in body["modules"]]
    assert order.index(sha2) < order.index(sha1), "newest upload first"
    mine = {m["sha256"]: m for m in body["modules"]}
    assert mine[sha1]["size"] == len(first)
    assert mine[sha2]["size"] == len(second)
    assert mine[sha1]["last_used_at"] is None
    uploaded = datetime.fromisoformat(str(mine[sha1]["uploaded_at"]).replace("Z", "+00:00"))
    assert uploaded.tzinfo is not None


async def test_another_tenants_modules_are_never_listed(alpha: Client, beta: Client) -> None:
    theirs = await beta.upload(unique("noop"))
    assert theirs in await listing(beta)
    assert theirs not in await listing(alpha)


async def test_shared_bytes_are_listed_per_tenant_with_own_upload_time(
    alpha: Client, beta: Client
) -> None:
    wasm = unique("noop")
    sha = await alpha.upload(wasm)
    assert sha not in await listing(beta)
    assert await beta.upload(wasm) == sha
    a, b = (await listing(alpha))[sha], (await listing(beta))[sha]
    assert str(b["uploaded_at"]) > str(a["uploaded_at"])
    # a re-upload by the same tenant keeps its first time
    await alpha.upload(wasm)
    assert (await listing(alpha))[sha]["uploaded_at"] == a["uploaded_at"]


async def test_last_used_is_the_newest_job_of_the_tenant(alpha: Client, beta: Client) -> None:
    wasm = unique("noop")
    sha = await alpha.upload(wasm)
    await beta.upload(wasm)
    job = await alpha.submit(sha)
    await finish(alpha, job["id"])
    assert (await listing(alpha))[sha]["last_used_at"] == job["submitted_at"]
    assert (await listing(beta))[sha]["last_used_at"] is None, "alpha's job is not beta's use"


async def test_upload_times_survive_a_restart(tmp_path_factory: pytest.TempPathFactory,
                                              broker: str) -> None:
    settings = make_settings(tmp_path_factory.mktemp("modrestart"), broker,
                             pool__min_idle=0)
    async with serving(settings) as (daemon, session):
        client = Client(daemon, session, "alpha")
        sha = await client.upload(unique("noop"))
        before = await listing(client)
    async with serving(settings) as (daemon, session):
        after = await listing(Client(daemon, session, "alpha"))
    assert after[sha] == before[sha]
