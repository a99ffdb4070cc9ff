"""Authentication and tenant isolation over the HTTP API.

Every ``/v1`` route needs a valid bearer token; another tenant's job answers exactly
like a job that does not exist; job ids cannot be guessed. All cases share one
daemon on a module-scoped event loop.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from poold.daemon import Daemon
from tests.api.helpers import finish, still_serving
from tests.support.daemon import TOKENS, Client, make_settings, serving
from tests.support.wasm_fixtures import module, with_custom_section

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

UNKNOWN_JOB = "j-" + "5" * 32


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, broker: str
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    async with serving(make_settings(tmp_path_factory.mktemp("auth"), broker)) as served_:
        yield served_


@pytest.fixture(scope="module")
def alpha(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    """Tenant alpha on the shared daemon (overrides conftest's per-test ``alpha``)."""
    return Client(served[0], served[1], "alpha")


@pytest.fixture(scope="module")
def beta(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    return Client(served[0], served[1], "beta")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alpha_job(alpha: Client) -> dict[str, Any]:
    """A finished job of alpha's that wrote output, logs and artifacts."""
    submitted = await alpha.submit(await alpha.upload(module("artifacts")), args=["secret"])
    [job] = await finish(alpha, submitted["id"])
    assert job["state"] == "succeeded", job
    assert job["artifacts"], job
    return job


async def raw(client: Client, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
    """A request with exactly the given headers (no token added): status, headers, body."""
    async with client.session.request(method, client.base + path, **kw) as r:
        body = await r.read()
        return r.status, r.headers, body


# -- authentication ------------------------------------------------------------------

ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/v1/jobs", {}),
    ("POST", "/v1/jobs", {"json": {"module": "0" * 64}}),
    ("PUT", "/v1/modules", {"data": module("noop"),
                            "headers": {"Content-Type": "application/wasm"}}),
    ("GET", f"/v1/jobs/{UNKNOWN_JOB}", {}),
    ("DELETE", f"/v1/jobs/{UNKNOWN_JOB}", {}),
    ("GET", "/v1/pool", {}),
    ("GET", "/v1/modules", {}),
]

BAD_CREDENTIALS: dict[str, str | None] = {
    "none": None,
    "wrong-token": "Bearer not-the-token-" + "x" * 20,
    "basic": "Basic " + base64.b64encode(f"alpha:{TOKENS['alpha']}".encode()).decode(),
    "token-without-scheme": TOKENS["alpha"],
    "empty-bearer": "Bearer ",
    "stored-hash-as-token": "Bearer " + hashlib.sha256(TOKENS["alpha"].encode()).hexdigest(),
    "other-case-token": "Bearer " + TOKENS["alpha"].upper(),
    # the whole token counts: not a prefix of it, nor it with anything after
    "token-plus-suffix": "Bearer " + TOKENS["alpha"] + "x",
    "token-minus-last-char": "Bearer " + TOKENS["alpha"][:-1],
}


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS), ids=list(BAD_CREDENTIALS))
@pytest.mark.parametrize(("method", "path", "kw"), ROUTES,
                         ids=["list", "submit", "upload", "get", "cancel", "pool", "modules"])
async def test_bad_credentials_get_401(
    alpha: Client, credentials: str, method: str, path: str, kw: dict[str, Any]
) -> None:
    headers = dict(kw.get("headers", {}))
    value = BAD_CREDENTIALS[credentials]
    if value is not None:
        headers["Authorization"] = value
    status, response_headers, body = await raw(
        alpha, method, path, **{**kw, "headers": headers})
    assert status == 401, body
    assert response_headers.get("WWW-Authenticate", "").startswith("Bearer")
    message = json.loads(body)["error"]
    assert "token" in message.lower() or "bearer" in message.lower(), message
    await still_serving(alpha)


async def test_rejected_credentials_change_nothing(alpha: Client) -> None:
    bad = {"Authorization": "Bearer nope"}
    wasm = with_custom_section(module("noop"), f"auth-{secrets.token_hex(4)}", b"")
    status, _, _ = await raw(alpha, "PUT", "/v1/modules", data=wasm,
                             headers={**bad, "Content-Type": "application/wasm"})
    assert status == 401
    # the module was not stored
    await alpha.json("POST", "/v1/jobs", 404, json={"module": hashlib.sha256(wasm).hexdigest()})

    noop = await alpha.upload(module("noop"))
    before = await alpha.json("GET", "/v1/jobs", 200)
    status, _, _ = await raw(alpha, "POST", "/v1/jobs", json={"module": noop}, headers=bad)
    assert status == 401
    assert await alpha.json("GET", "/v1/jobs", 200) == before


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_need_no_token(alpha: Client, path: str) -> None:
    status, headers, body = await raw(alpha, "GET", path)
    assert status == 200, body
    if path == "/metrics":
        assert headers["Content-Type"].startswith("text/plain")
        assert b"poold_pool_workers" in body


async def test_scheme_is_case_insensitive(alpha: Client) -> None:
    status, _, body = await raw(alpha, "GET", "/v1/jobs",
                                headers={"Authorization": "bearer " + TOKENS["alpha"]})
    assert status == 200, body


# -- isolation -----------------------------------------------------------------------

JOB_ROUTES: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "", {}),
    ("GET", "/output", {}),
    ("GET", "/output?follow=true", {}),
    ("GET", "/logs", {}),
    ("GET", "/logs", {"Accept": "text/event-stream"}),
    ("GET", "/artifacts", {}),
    ("GET", "/artifacts/hello.txt", {}),
    ("DELETE", "", {}),
]


@pytest.mark.parametrize(("method", "suffix", "headers"), JOB_ROUTES,
                         ids=[f"{m} {s or '/'} {''.join(h.values())}".strip()
                              for m, s, h in JOB_ROUTES])
async def test_other_tenants_job_is_indistinguishable_from_unknown(
    alpha: Client, beta: Client, alpha_job: dict[str, Any], method: str, suffix: str,
    headers: dict[str, str],
) -> None:
    job_id = alpha_job["id"]
    # the owner can see it (DELETE: it already ended, so 409)
    async with alpha.request(method, f"/v1/jobs/{job_id}{suffix}", headers=headers) as r:
        owner_body = await r.read()
        assert r.status == (409 if method == "DELETE" else 200), owner_body

    async def answer(target: str) -> tuple[int, str | None, bytes]:
        async with beta.request(method, f"/v1/jobs/{target}{suffix}", headers=headers) as r:
            return r.status, r.headers.get("Content-Type"), await r.read()

    theirs = await answer(job_id)
    unknown = await answer(UNKNOWN_JOB)
    assert theirs == unknown
    status, content_type, body = theirs
    assert status == 404
    assert content_type is not None and content_type.startswith("application/json")
    assert "no such job" in json.loads(body)["error"]
    assert b"secret" not in body and job_id.encode() not in body
    await still_serving(beta)


async def test_other_tenant_cannot_cancel_a_running_job(alpha: Client, beta: Client) -> None:
    job = await alpha.submit(await alpha.upload(module("spin")), limits={"timeout_s": 30})
    async with beta.request("DELETE", f"/v1/jobs/{job['id']}") as r:
        theirs = (r.status, await r.read())
    async with beta.request("DELETE", f"/v1/jobs/{UNKNOWN_JOB}") as r:
        unknown = (r.status, await r.read())
    assert theirs == unknown
    assert theirs[0] == 404
    mine = await alpha.json("GET", f"/v1/jobs/{job['id']}", 200)
    assert mine["state"] in {"queued", "assigned", "running"}, mine
    cancelled = await alpha.json("DELETE", f"/v1/jobs/{job['id']}", 200)
    assert cancelled["state"] == "cancelled", cancelled
    [final] = await finish(alpha, job["id"])
    assert final["state"] == "cancelled", final


async def test_idempotency_keys_are_per_tenant(alpha: Client, beta: Client) -> None:
    """The same Idempotency-Key from another tenant is a new job, never a replay of
    (and so never a peek at) the first tenant's job."""
    key = {"Idempotency-Key": "nightly-report-" + secrets.token_hex(4)}
    noop_a = await alpha.upload(module("noop"))
    noop_b = await beta.upload(module("noop"))
    first = await alpha.json("POST", "/v1/jobs", 202, json={"module": noop_a}, headers=key)
    replay = await alpha.json("POST", "/v1/jobs", 200, json={"module": noop_a}, headers=key)
    assert replay["id"] == first["id"]
    theirs = await beta.json("POST", "/v1/jobs", 202, json={"module": noop_b}, headers=key)
    assert theirs["id"] != first["id"]
    await finish(alpha, first["id"])
    await finish(beta, theirs["id"])


async def all_job_ids(client: Client) -> list[str]:
    ids: list[str] = []
    path: str | None = "/v1/jobs?limit=2"
    while path is not None:
        page = await client.json("GET", path, 200)
        ids.extend(j["id"] for j in page["jobs"])
        path = page["next"]
    return ids


async def test_job_list_is_per_tenant(
    alpha: Client, beta: Client, alpha_job: dict[str, Any]
) -> None:
    [beta_job] = await finish(beta, (await beta.submit(await beta.upload(module("noop"))))["id"])
    alpha_ids = await all_job_ids(alpha)
    beta_ids = await all_job_ids(beta)
    assert alpha_job["id"] in alpha_ids
    assert beta_job["id"] in beta_ids
    assert not set(alpha_ids) & set(beta_ids), (alpha_ids, beta_ids)
    # a cursor naming another tenant's job reveals nothing either
    page = await beta.json("GET", f"/v1/jobs?before={alpha_job['id']}", 200)
    assert page["jobs"] == [], page


async def test_job_ids_are_random_128_bits(alpha: Client) -> None:
    noop = await alpha.upload(module("noop"))
    ids = [(await alpha.submit(noop))["id"] for _ in range(2)]
    await finish(alpha, *ids)
    for job_id in ids:
        match = re.fullmatch(r"j-([0-9a-f]+)", job_id)
        assert match, job_id
        assert len(match.group(1)) >= 32, job_id
    assert ids[0] != ids[1]
    # not a counter or a timestamp: already the first 32 bits differ
    assert ids[0][2:10] != ids[1][2:10], ids


async def test_modules_are_private_to_the_tenant_that_uploaded_them(
    alpha: Client, beta: Client
) -> None:
    wasm = with_custom_section(module("noop"), "private-to-alpha", b"x")
    async with alpha.request("PUT", "/v1/modules", data=wasm) as r:
        assert r.status == 201
        sha = (await r.json())["sha256"]
    async with beta.request("POST", "/v1/jobs", json={"module": sha}) as r:
        assert r.status == 404, "beta must not learn that alpha uploaded this module"
        assert "unknown module" in (await r.json())["error"]
    async with beta.request("PUT", "/v1/modules", data=wasm) as r:
        assert r.status == 201, "new for beta, although stored once"
    async with beta.request("PUT", "/v1/modules", data=wasm) as r:
        assert r.status == 200
    job = await beta.submit(sha)
    assert job["module"] == sha
