"""An artifact's ``url`` in the listing fetches that artifact, whatever its name:
a module chooses the names, and ``#``, ``?``, spaces and ``%`` must be escaped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.api.helpers import finish
from tests.support.daemon import Client, make_settings, serving
from tests.support.wasm_fixtures import module

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alpha(
    tmp_path_factory: pytest.TempPathFactory, broker: str
) -> AsyncIterator[Client]:
    settings = make_settings(tmp_path_factory.mktemp("arturl"), broker, pool__min_idle=1)
    async with serving(settings) as (daemon, session):
        yield Client(daemon, session, "alpha")


async def test_listed_url_fetches_an_artifact_with_a_hash_and_a_question_mark(
    alpha: Client,
) -> None:
    job = await alpha.submit(await alpha.upload(module("markupname")))
    [done] = await finish(alpha, job["id"])
    assert done["state"] == "succeeded", done
    listing = await alpha.json("GET", f"/v1/jobs/{job['id']}/artifacts", 200)
    [artifact] = listing["artifacts"]
    assert artifact["name"] == "<img src=x onerror=alert(1)> #1?.txt"
    url = artifact["url"]
    assert "#" not in url and "?" not in url and " " not in url
    async with alpha.session.get(alpha.base + url, headers=alpha.headers) as r:
        assert r.status == 200, await r.text()
        assert await r.read() == b"markup\n"
