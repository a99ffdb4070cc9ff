"""A module that cannot be compiled within the compiler's caps is not handed to a
worker (where the same compilation would run under the job's limits instead): its
jobs get 400 naming the cap, and uploading it again retries the compilation."""

from __future__ import annotations

import io

import aiohttp
import pytest

from tests.support.daemon import Client, DaemonFactory
from tests.support.wasm_encode import many_functions

pytestmark = pytest.mark.timeout(120)

WASM = {"Content-Type": "application/wasm"}


@pytest.fixture
async def alpha(start_daemon: DaemonFactory, session: aiohttp.ClientSession) -> Client:
    daemon = await start_daemon(pool__min_idle=0, modules__compile_memory_mb=128)
    return Client(daemon, session, "alpha")


async def test_jobs_of_a_module_over_the_compile_memory_cap_are_refused(alpha: Client) -> None:
    modules = alpha.daemon.modules
    assert modules is not None and modules.precompiler is not None
    precompiler = modules.precompiler
    wasm = many_functions(50_000)  # ~300 MB to compile: over the 128 MiB cap
    body = await alpha.json("PUT", "/v1/modules", 201, data=io.BytesIO(wasm), headers=WASM)
    sha = body["sha256"]
    await precompiler.idle(within_s=90)
    assert precompiler.done == [(sha, "plain", "failed")], precompiler.done

    refused = await alpha.json("POST", "/v1/jobs", 400, json={"module": sha})
    assert "modules.compile_memory_mb" in refused["error"], refused
    assert "128 MiB" in refused["error"], refused
    assert (await alpha.json("GET", "/v1/jobs", 200))["jobs"] == [], "nothing was accepted"

    # uploading it again retries; under the same cap it fails the same way
    await alpha.json("PUT", "/v1/modules", 200, data=io.BytesIO(wasm), headers=WASM)
    await precompiler.idle(within_s=90)
    failed = (sha, "plain", "failed")
    assert precompiler.done == [failed, failed], precompiler.done
    await alpha.json("POST", "/v1/jobs", 400, json={"module": sha})
