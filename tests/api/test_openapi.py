"""docs/openapi.json is the HTTP API's contract, and it matches the implementation:

- the daemon serves exactly that file at ``/openapi.json``;
- every route the server has is documented, and every documented route exists
  (the failure says exactly what to add);
- the POST /v1/jobs body schema is the one pydantic validates with;
- real requests to every operation answer a documented status, with the
  documented content type and a body that validates against the documented schema.

``tests/api/test_schemathesis.py`` then throws generated requests at it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import pytest_asyncio
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from poold.api.app import Api
from poold.api.bodies import JobRequest
from poold.daemon import Daemon
from tests.api.helpers import finish
from tests.support.daemon import Client, make_settings, serving
from tests.support.wasm_fixtures import module

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
DOC: dict[str, Any] = json.loads(DOC_PATH.read_text())
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
URN = "urn:poold:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(
    URN, Resource.from_contents(DOC, default_specification=DRAFT202012))


def documented_operations() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in DOC["paths"].items()
            for method in item if method in METHODS}


def openapi_path(aiohttp_path: str) -> str:
    """``/v1/jobs/{id}/artifacts/{name:.+}`` → ``/v1/jobs/{id}/artifacts/{name}``."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", aiohttp_path)


def served_operations(app: Any) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD beside every GET
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"a route without a path: {route}"
        found.add((route.method, openapi_path(path)))
    return found


def skeleton(method: str, path: str) -> str:
    params = re.findall(r"\{(\w+)\}", path)
    operation: dict[str, Any] = {
        "operationId": "<name>", "summary": "<what it does>",
        "responses": {"200": {"description": "<what comes back>", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/<Schema>"}}}},
            "401": {"$ref": "#/components/responses/Unauthorized"}},
    }
    if params:
        operation["parameters"] = [{"name": p, "in": "path", "required": True,
                                    "schema": {"type": "string"}} for p in params]
    return json.dumps({path: {method.lower(): operation}}, indent=2)


# -- the document and the router -------------------------------------------------------


ADMIN = b"openapi-admin-token-" + b"q" * 12


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, broker: str
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    settings = make_settings(tmp_path_factory.mktemp("openapi"), broker, pool__min_idle=1,
                             server__admin_token_sha256=hashlib.sha256(ADMIN).hexdigest(),
                             server__max_upload_mb=1, server__max_input_mb=1,
                             server__body_timeout_s=1, server__max_uploads_per_tenant=1)
    async with serving(settings) as served_:
        yield served_


@pytest.fixture(scope="module")
def alpha(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    return Client(served[0], served[1], "alpha")


async def test_document_is_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1"), DOC["openapi"]
    assert DOC_PATH.resolve().parent.name == "api", "docs/openapi.json links the served file"


async def test_the_daemon_serves_the_document(alpha: Client) -> None:
    async with alpha.session.get(alpha.base + "/openapi.json") as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        assert await r.json() == DOC


async def test_every_route_is_documented_and_every_documented_route_exists(
    served: tuple[Daemon, aiohttp.ClientSession],
) -> None:
    api = served[0].api
    assert isinstance(api, Api)
    served_ops = served_operations(api.app())
    documented = documented_operations()
    missing = sorted(served_ops - documented)
    assert not missing, (
        "routes the server has but docs/openapi.json does not document. Add each under "
        "\"paths\" in poold/api/openapi.json (docs/openapi.json links to it), with every "
        "status it can answer and its body schema (see the existing routes), e.g.:\n"
        + "\n".join(skeleton(m, p) for m, p in missing))
    extra = sorted(documented - served_ops)
    assert not extra, ("docs/openapi.json documents routes the server does not have; "
                       f"remove them or add the routes: {extra}")


async def test_job_request_schema_is_the_one_pydantic_validates_with() -> None:
    generated = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = generated.pop("$defs")
    schemas = DOC["components"]["schemas"]
    fix = ("poold/api/bodies.py changed: replace components.schemas.{name} in "
           "poold/api/openapi.json with JobRequest.model_json_schema("
           "ref_template='#/components/schemas/{{model}}') (its $defs go beside it)")
    assert schemas["JobRequest"] == generated, fix.format(name="JobRequest")
    for name, schema in defs.items():
        assert schemas.get(name) == schema, fix.format(name=name)


# -- real answers against the document -------------------------------------------------

SEEN: set[tuple[str, str, int]] = set()


def pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = REGISTRY.resolver().lookup(URN + node["$ref"]).contents
    return node


async def conforms(method: str, template: str, r: aiohttp.ClientResponse) -> bytes:
    """Check one answer against the document: its status is documented for the
    operation, its content type is one documented for that status, and a JSON body
    validates against the schema."""
    body = await r.read()
    operation = DOC["paths"][template][method.lower()]
    status = str(r.status)
    assert status in operation["responses"], (
        f"{method} {template} answered {status}, which docs/openapi.json does not list "
        f"for it (body: {body[:200]!r})")
    SEEN.add((method, template, r.status))
    response = resolve(operation["responses"][status])
    content = response.get("content")
    if not content:
        return body
    media = r.content_type
    assert media in content, f"{method} {template} {status}: {media} not in {sorted(content)}"
    if media == "application/json":
        where = response_pointer(template, method, status, operation, media)
        jsonschema.Draft202012Validator(
            {"$ref": f"{URN}#{where}"}, registry=REGISTRY,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        ).validate(json.loads(body))
    return body


def response_pointer(template: str, method: str, status: str, operation: dict[str, Any],
                     media: str) -> str:
    ref = operation["responses"][status].get("$ref")
    if ref is not None:
        return ref.removeprefix("#") + "/" + pointer("content", media, "schema")
    return "/" + pointer("paths", template, method.lower(), "responses", status, "content",
                         media, "schema")


async def call(client: Client | None, served: tuple[Daemon, aiohttp.ClientSession],
               method: str, template: str, status: int, path: str | None = None,
               **kw: Any) -> Any:
    session = served[1]
    url = served[0].url + (path or template)
    headers = {**(client.headers if client else {}), **kw.pop("headers", {})}
    async with session.request(method, url, headers=headers, allow_redirects=False, **kw) as r:
        body = await conforms(method, template, r)
        assert r.status == status, (method, path or template, r.status, body[:300])
        return json.loads(body) if r.content_type == "application/json" else body


async def test_answers_conform_to_the_document(
    alpha: Client, served: tuple[Daemon, aiohttp.ClientSession],
) -> None:
    wasm = {"Content-Type": "application/wasm"}
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/console/"):
        await call(None, served, "GET", path, 200)
    for path in ("/", "/console"):
        await call(None, served, "GET", path, 302)
    await call(None, served, "GET", "/console/{name}", 200, "/console/index.html")
    await call(None, served, "GET", "/console/{name}", 404, "/console/nothing.txt")

    await call(None, served, "GET", "/v1/jobs", 401)
    await call(None, served, "PUT", "/v1/modules", 401, data=b"x", headers=wasm)
    await call(alpha, served, "PUT", "/v1/modules", 400, data=b"not wasm", headers=wasm)
    await call(alpha, served, "PUT", "/v1/modules", 413, headers=wasm,
               data=io.BytesIO(b"\x00asm\x01\x00\x00\x00" + bytes(2 * 1024 * 1024)))
    artifacts = module("artifacts")
    stored = await call(alpha, served, "PUT", "/v1/modules", 201, data=artifacts, headers=wasm)
    await call(alpha, served, "PUT", "/v1/modules", 200, data=artifacts, headers=wasm)
    ticker = (await call(alpha, served, "PUT", "/v1/modules", 201, data=module("ticker"),
                         headers=wasm))["sha256"]
    await call(alpha, served, "GET", "/v1/modules", 200)

    key = {"Idempotency-Key": "openapi-1"}
    job = await call(alpha, served, "POST", "/v1/jobs", 202, headers=key,
                     json={"module": stored["sha256"], "args": ["x"], "input": ["a"]})
    await call(alpha, served, "POST", "/v1/jobs", 200, headers=key,
               json={"module": stored["sha256"], "args": ["x"], "input": ["a"]})
    await call(alpha, served, "POST", "/v1/jobs", 400, json={"module": stored["sha256"],
                                                             "limits": {"cpu": 1}})
    await call(alpha, served, "POST", "/v1/jobs", 404, json={"module": "0" * 64})
    await call(alpha, served, "POST", "/v1/jobs", 413, headers={"Content-Type": "application/json"},
               data=io.BytesIO(json.dumps({"module": "x" * (2 << 20)}).encode()))
    await finish(alpha, job["id"])

    one = "/v1/jobs/" + job["id"]
    await call(alpha, served, "GET", "/v1/jobs", 200)
    await call(alpha, served, "GET", "/v1/jobs", 400, "/v1/jobs?limit=0")
    await call(alpha, served, "GET", "/v1/jobs/{id}", 200, one)
    await call(alpha, served, "GET", "/v1/jobs/{id}", 404, "/v1/jobs/j-nothing")
    await call(alpha, served, "GET", "/v1/jobs/{id}/output", 200, one + "/output")
    await call(alpha, served, "GET", "/v1/jobs/{id}/output", 200, one + "/output?follow=true")
    await call(alpha, served, "GET", "/v1/jobs/{id}/output", 404, "/v1/jobs/j-nothing/output")
    await call(alpha, served, "GET", "/v1/jobs/{id}/logs", 200, one + "/logs")
    await call(alpha, served, "GET", "/v1/jobs/{id}/logs", 200, one + "/logs",
               headers={"Accept": "text/event-stream"})
    await call(alpha, served, "GET", "/v1/jobs/{id}/logs", 404, "/v1/jobs/j-nothing/logs")
    await call(alpha, served, "GET", "/v1/jobs/{id}/artifacts", 200, one + "/artifacts")
    await call(alpha, served, "GET", "/v1/jobs/{id}/artifacts", 404,
               "/v1/jobs/j-nothing/artifacts")
    await call(alpha, served, "GET", "/v1/jobs/{id}/artifacts/{name}", 200,
               one + "/artifacts/sub/args.txt")
    await call(alpha, served, "GET", "/v1/jobs/{id}/artifacts/{name}", 404,
               one + "/artifacts/nothing.txt")
    await call(alpha, served, "DELETE", "/v1/jobs/{id}", 409, one)
    await call(alpha, served, "DELETE", "/v1/jobs/{id}", 404, "/v1/jobs/j-nothing")
    running = await call(alpha, served, "POST", "/v1/jobs", 202, json={"module": ticker})
    await call(alpha, served, "DELETE", "/v1/jobs/{id}", 200, "/v1/jobs/" + running["id"])
    await call(alpha, served, "GET", "/v1/pool", 200)
    await call(alpha, served, "GET", "/v1/runtimes", 200)
    admin = {"Authorization": "Bearer " + ADMIN.decode()}
    await call(None, served, "PUT", "/v1/pool", 200, json={"min_idle": 1}, headers=admin)
    await call(None, served, "PUT", "/v1/pool", 400, json={"reuse": "tenant"}, headers=admin)
    await call(alpha, served, "PUT", "/v1/pool", 403, json={"min_idle": 1})
    await call(None, served, "PUT", "/v1/pool", 401, json={"min_idle": 1})
    await call(alpha, served, "GET", "/v1/jobs/export", 200)
    await call(alpha, served, "GET", "/v1/jobs/export", 200, "/v1/jobs/export?format=ndjson")
    await call(alpha, served, "GET", "/v1/jobs/export", 400, "/v1/jobs/export?state=done")

    await refusals_conform(alpha, served)

    untried = sorted(op for op in documented_operations()
                     if not any((op[0], op[1]) == (m, t) and s < 400 for m, t, s in SEEN))
    assert not untried, f"operations no successful request checked against the doc: {untried}"


class Raw:
    """An answer read off a raw socket, shaped like what :func:`conforms` reads."""

    def __init__(self, data: bytes) -> None:
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        headers = dict(line.split(": ", 1) for line in lines[1:])
        self.content_type = headers["Content-Type"].split(";")[0]

    async def read(self) -> bytes:
        return self.body


async def stalled_upload(alpha: Client) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = alpha.base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"PUT /v1/modules HTTP/1.1\r\nHost: x\r\nAuthorization: "
                 + alpha.headers["Authorization"].encode()
                 + b"\r\nContent-Type: application/wasm\r\nContent-Length: 100\r\n\r\n\x00asm")
    await writer.drain()
    return reader, writer


async def refusals_conform(alpha: Client, served: tuple[Daemon, aiohttp.ClientSession]) -> None:
    """The answers of a stalled body (408), a full upload slot (429) and a draining
    daemon (503) are documented too."""
    daemon = served[0]
    assert daemon.api is not None
    reader, writer = await stalled_upload(alpha)
    try:
        await daemon.api.uploads.wait_until(1, within_s=10)
        await call(alpha, served, "PUT", "/v1/modules", 429, data=module("noop"),
                   headers={"Content-Type": "application/wasm"})
        async with asyncio.timeout(30):
            answer = Raw(await reader.read())
    finally:
        writer.close()
    assert answer.status == 408
    await conforms("PUT", "/v1/modules", answer)  # type: ignore[arg-type]

    daemon.draining = True
    try:
        await call(alpha, served, "PUT", "/v1/modules", 503, data=module("noop"),
                   headers={"Content-Type": "application/wasm"})
        await call(alpha, served, "POST", "/v1/jobs", 503, json={"module": "0" * 64})
    finally:
        daemon.draining = False
