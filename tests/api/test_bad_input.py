"""Bad input to the HTTP API: every mistake gets a 4xx whose JSON ``error`` sentence
names the problem, and the daemon keeps serving afterwards.

All cases share one daemon (started with ``server.max_upload_mb = 1`` so the size
cap is cheap to hit) on a module-scoped event loop: a daemon per case would cost
about a second each.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import wasmtime
from prometheus_client.parser import text_string_to_metric_families

from poold.daemon import Daemon
from tests.api.helpers import finish, still_serving
from tests.support.daemon import Client, make_settings, serving
from tests.support.wasm_fixtures import module, truncated, with_custom_section

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

WASM = {"Content-Type": "application/wasm"}
MAX_UPLOAD_MB = 1
UNKNOWN_HASH = "0" * 64


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, broker: str
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    settings = make_settings(tmp_path_factory.mktemp("bad-input"), broker,
                             server__max_upload_mb=MAX_UPLOAD_MB)
    async with serving(settings) as served_:
        yield served_


@pytest.fixture(scope="module")
def alpha(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    """Tenant alpha on the shared daemon (overrides conftest's per-test ``alpha``)."""
    return Client(served[0], served[1], "alpha")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def noop(alpha: Client) -> str:
    """sha256 of the uploaded ``noop`` module."""
    return await alpha.upload(module("noop"))


async def refused(
    client: Client, method: str, path: str, status: int, *words: str | tuple[str, ...],
    **kw: Any,
) -> str:
    """Send a bad request; check the status, that the body is ``{"error": sentence}``
    mentioning every word (a tuple: any one of them), and that the daemon still serves."""
    body = await client.json(method, path, status, **kw)
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str)
    assert len(message) > 10, message
    for word in words:
        options = word if isinstance(word, tuple) else (word,)
        assert any(o.lower() in message.lower() for o in options), (options, message)
    await still_serving(client)
    return message


async def upload_refused(client: Client, data: Any, status: int, *words: str | tuple[str, ...],
                         **kw: Any) -> str:
    return await refused(client, "PUT", "/v1/modules", status, *words, data=data, headers=WASM,
                         **kw)


def rejections(text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "poold_module_uploads_rejected_total":
                counts[sample.labels["reason"]] = sample.value
    return counts


async def rejected_counts(client: Client) -> dict[str, float]:
    async with client.session.get(client.base + "/metrics") as r:
        assert r.status == 200
        return rejections(await r.text())


# -- uploads -------------------------------------------------------------------------


async def test_upload_empty_body(alpha: Client) -> None:
    await upload_refused(alpha, b"", 400, "empty")


@pytest.mark.parametrize(
    "data",
    [b"hello world", b'(module (func (export "_start")))\n', b"\x1f\x8b\x08\x00" + bytes(40)],
    ids=["text", "wat-source", "gzip"],
)
async def test_upload_not_wasm(alpha: Client, data: bytes) -> None:
    await upload_refused(alpha, data, 400, "not a WebAssembly module")


async def test_upload_elf_executable(alpha: Client) -> None:
    elf = Path("/bin/true").read_bytes()
    assert elf.startswith(b"\x7fELF")
    await upload_refused(alpha, elf, 400, "ELF", "native")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\xcf\xfa\xed\xfe\x07\x00\x00\x01" + bytes(120), "Mach-O"),
        (b"\xca\xfe\xba\xbe\x00\x00\x00\x02" + bytes(120), "Mach-O"),
        (b"MZ\x90\x00\x03\x00\x00\x00" + bytes(120), "PE"),
        (b"\x7fELF", "ELF"),
    ],
    ids=["mach-o", "mach-o-universal", "pe", "elf-magic-only"],
)
async def test_upload_native_headers(alpha: Client, data: bytes, kind: str) -> None:
    await upload_refused(alpha, data, 400, kind, "native", "not a WebAssembly module")


async def test_upload_truncated_module(alpha: Client) -> None:
    await upload_refused(alpha, truncated(module("noop")), 400, ("truncated", "not valid"))


async def test_upload_header_only(alpha: Client) -> None:
    # eight bytes of header and no sections is a valid empty module: it has no _start
    await upload_refused(alpha, b"\x00asm\x01\x00\x00\x00", 400, "_start")


async def test_upload_incomplete_header(alpha: Client) -> None:
    await upload_refused(alpha, b"\x00asm\x01", 400, "truncated")


async def test_upload_aot_section_is_refused_and_not_stored(alpha: Client) -> None:
    aot = with_custom_section(module("noop"), "wasmedge", b"\x01" * 64)
    await upload_refused(alpha, aot, 400, "AOT", "precompiled", "wasmedge")
    # the refused bytes cannot be run either
    await refused(alpha, "POST", "/v1/jobs", 404, "unknown module",
                  json={"module": hashlib.sha256(aot).hexdigest()})


async def test_upload_benign_custom_section_is_accepted(alpha: Client) -> None:
    wasm = with_custom_section(module("noop"), "producers", b"\x00")
    async with alpha.request("PUT", "/v1/modules", data=wasm, headers=WASM) as r:
        assert r.status == 201, await r.text()


async def test_upload_over_the_size_cap(alpha: Client) -> None:
    big = b"\x00asm\x01\x00\x00\x00" + bytes(MAX_UPLOAD_MB * 1024 * 1024 * 3 // 2)
    # a BytesIO body is sent with its Content-Length, so the cap applies before reading it
    message = await upload_refused(alpha, io.BytesIO(big), 413, "max_upload_mb", "limit")
    assert f"{len(big)} bytes" in message and f"{MAX_UPLOAD_MB} MiB" in message, message


async def test_upload_over_the_size_cap_without_content_length(alpha: Client) -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b"\x00asm\x01\x00\x00\x00"
        for _ in range(6):  # 1.5 MiB in 256 KiB chunks, sent chunked
            yield bytes(256 * 1024)

    message = await upload_refused(alpha, stream(), 413, "max_upload_mb", "limit")
    assert f"{MAX_UPLOAD_MB} MiB" in message, message


@pytest.mark.parametrize(
    "header",
    [b"\x00asm\x0d\x00\x01\x00", b"\x00asm\x02\x00\x00\x00"],
    ids=["component", "version-2"],
)
async def test_upload_component_or_unknown_version(alpha: Client, header: bytes) -> None:
    await upload_refused(alpha, header + bytes(32), 400, "component")


async def test_upload_without_start(alpha: Client) -> None:
    library = bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1))'))
    await upload_refused(alpha, library, 400, "_start")


async def test_upload_same_module_twice(alpha: Client) -> None:
    wasm = with_custom_section(module("noop"), f"poold-test-{secrets.token_hex(4)}", b"")
    want = {"sha256": hashlib.sha256(wasm).hexdigest(), "size": len(wasm)}
    assert await alpha.json("PUT", "/v1/modules", 201, data=wasm, headers=WASM) == want
    assert await alpha.json("PUT", "/v1/modules", 200, data=wasm, headers=WASM) == want
    job = await alpha.submit(want["sha256"])
    [done] = await finish(alpha, job["id"])
    assert done["state"] == "succeeded", done


async def test_rejections_are_counted_by_reason(alpha: Client) -> None:
    cases: dict[str, bytes] = {
        "empty": b"",
        "not_wasm": b"hello world",
        "native": b"\x7fELF\x02\x01\x01\x00" + bytes(64),
        "aot": with_custom_section(module("noop"), "wasmedge", b"x"),
        "truncated": truncated(module("noop")),
        "unsupported_version": b"\x00asm\x0d\x00\x01\x00" + bytes(8),
        "no_start": bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1))')),
        "too_large": b"\x00asm\x01\x00\x00\x00" + bytes(MAX_UPLOAD_MB * 1024 * 1024),
    }
    before = await rejected_counts(alpha)
    for data in cases.values():
        async with alpha.request("PUT", "/v1/modules", data=io.BytesIO(data), headers=WASM) as r:
            assert 400 <= r.status < 500, await r.text()
    after = await rejected_counts(alpha)
    for reason in cases:
        assert after.get(reason, 0) - before.get(reason, 0) == 1, (reason, before, after)


# -- jobs ----------------------------------------------------------------------------


async def test_job_unknown_module_hash(alpha: Client) -> None:
    await refused(alpha, "POST", "/v1/jobs", 404, "unknown module", UNKNOWN_HASH,
                  json={"module": UNKNOWN_HASH})


@pytest.mark.parametrize("value", ["noop", "../../etc/passwd", "A" * 64, "sha256:" + "0" * 64])
async def test_job_module_not_a_hash(alpha: Client, value: str) -> None:
    body = await alpha.json("POST", "/v1/jobs", 400 if len(value) != 64 else 404,
                            json={"module": value})
    assert "module" in body["error"], body
    await still_serving(alpha)


async def test_job_malformed_json(alpha: Client) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, "JSON", data=b'{"module": "',
                  headers={"Content-Type": "application/json"})


async def test_job_empty_body(alpha: Client) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, ("JSON", "module"), data=b"",
                  headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("body", [[], ["module"], "module", 42, None],
                         ids=["empty-array", "array", "string", "number", "null"])
async def test_job_body_not_an_object(alpha: Client, body: Any) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, "object", data=json.dumps(body).encode(),
                  headers={"Content-Type": "application/json"})


async def test_job_missing_module(alpha: Client) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, "module", ("required", "missing"),
                  json={"args": []})


async def test_job_unknown_field(alpha: Client, noop: str) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, "priority", "unknown field",
                  json={"module": noop, "priority": 1})


@pytest.mark.parametrize("args", ["a b", [1, 2], ["ok", None], {"0": "x"}],
                         ids=["string", "ints", "null-item", "object"])
async def test_job_args_not_a_list_of_strings(alpha: Client, noop: str, args: Any) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, "args", json={"module": noop, "args": args})


@pytest.mark.parametrize("env", [{"A": 1}, {"A": None}, {"A": ["x"]}, ["A=1"]],
                         ids=["int", "null", "list", "array"])
async def test_job_env_with_non_string_value(alpha: Client, noop: str, env: Any) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, "env", json={"module": noop, "env": env})


@pytest.mark.parametrize(("field", "value"), [("args", ["ok", "a\x00b"]), ("env", {"A": "x\x00y"})],
                         ids=["arg", "env-value"])
async def test_job_nul_in_args_or_env_values(
    alpha: Client, noop: str, field: str, value: Any
) -> None:
    """A C string ends at NUL: the module would see a shorter argument than was sent."""
    before = await alpha.json("GET", "/v1/jobs?limit=1", 200)
    await refused(alpha, "POST", "/v1/jobs", 400, field, json={"module": noop, field: value})
    assert await alpha.json("GET", "/v1/jobs?limit=1", 200) == before, "the job was stored"


@pytest.mark.parametrize("env", [{"A\x00B": "1"}, {"\x00": "1"}, {"A=B": "1"}, {"": "1"}],
                         ids=["nul-inside", "nul-only", "equals", "empty"])
async def test_job_env_key_a_process_environment_cannot_hold(
    alpha: Client, noop: str, env: dict[str, str]
) -> None:
    """A NUL or '=' in a name, or an empty name, would be cut or split by the module's
    environment: refused before the job is stored, never silently changed."""
    before = await alpha.json("GET", "/v1/jobs?limit=1", 200)
    await refused(alpha, "POST", "/v1/jobs", 400, "env", json={"module": noop, "env": env})
    assert await alpha.json("GET", "/v1/jobs?limit=1", 200) == before, "the job was stored"


@pytest.mark.parametrize("records", [["a\nb"], [1], "line"], ids=["newline", "int", "string"])
async def test_job_bad_input_records(alpha: Client, noop: str, records: Any) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, "input", json={"module": noop, "input": records})


async def test_job_newline_in_a_record_is_explained(alpha: Client, noop: str) -> None:
    message = await refused(alpha, "POST", "/v1/jobs", 400, "newline",
                            json={"module": noop, "input": ["ok", "two\nlines"]})
    assert "Value error" not in message, message  # pydantic's words, not ours


async def test_job_idempotency_key_too_long(alpha: Client, noop: str) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, "Idempotency-Key",
                  json={"module": noop}, headers={"Idempotency-Key": "k" * 201})


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"timeout_s": -1}, "limits.timeout_s"),
        ({"timeout_s": 0}, "limits.timeout_s"),
        ({"timeout_s": 3601}, "limits.timeout_s"),  # limits.max_timeout_s is 3600
        ({"memory_mb": 0}, "limits.memory_mb"),
        ({"memory_mb": 4097}, "limits.memory_mb"),  # limits.max_memory_mb is 4096
        ({"memory_mb": 1.5}, "limits.memory_mb"),
        ({"fuel": 0}, "limits.fuel"),
        ({"fuel": -5}, "limits.fuel"),
        ({"cpu": 2}, "limits.cpu"),
        ("fast", "limits"),
        ([60], "limits"),
    ],
    ids=["timeout-negative", "timeout-zero", "timeout-over-max", "memory-zero",
         "memory-over-max", "memory-fraction", "fuel-zero", "fuel-negative", "unknown-limit",
         "string", "array"],
)
async def test_job_bad_limits(alpha: Client, noop: str, limits: Any, field: str) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, field, json={"module": noop, "limits": limits})


@pytest.mark.parametrize("timeout", [True, "10"], ids=["bool", "string"])
async def test_job_timeout_must_be_a_number(alpha: Client, noop: str, timeout: Any) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, "limits.timeout_s",
                  json={"module": noop, "limits": {"timeout_s": timeout}})


async def test_job_unknown_limit_lists_the_allowed_limits(alpha: Client, noop: str) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, "limits.cpu", "timeout_s", "memory_mb", "fuel",
                  json={"module": noop, "limits": {"cpu": 2}})


@pytest.mark.parametrize("raw", [b"Infinity", b"NaN", b"1e999"], ids=["inf", "nan", "huge"])
async def test_job_non_finite_timeout(alpha: Client, noop: str, raw: bytes) -> None:
    body = b'{"module": "%s", "limits": {"timeout_s": %s}}' % (noop.encode(), raw)
    await refused(alpha, "POST", "/v1/jobs", 400, "limits.timeout_s", data=body,
                  headers={"Content-Type": "application/json"})


async def test_get_unknown_job(alpha: Client) -> None:
    await refused(alpha, "GET", "/v1/jobs/j-" + "0" * 32, 404, "no such job")
    await refused(alpha, "GET", "/v1/jobs/nonsense", 404, "no such job")


async def client_errors(client: Client) -> dict[str, float]:
    async with client.session.get(client.base + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {s.labels["status"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "poold_http_client_errors_total"}


async def test_unknown_job_404_is_counted(alpha: Client) -> None:
    before = (await client_errors(alpha)).get("404", 0)
    await refused(alpha, "GET", "/v1/jobs/j-" + "0" * 32, 404, "no such job")
    assert (await client_errors(alpha)).get("404", 0) == before + 1


async def test_bad_request_is_counted(alpha: Client) -> None:
    before = (await client_errors(alpha)).get("400", 0)
    await refused(alpha, "GET", "/v1/jobs?limit=0", 400, "limit")
    assert (await client_errors(alpha)).get("400", 0) == before + 1


async def test_delete_finished_job(alpha: Client, noop: str) -> None:
    job = await alpha.submit(noop)
    await finish(alpha, job["id"])
    await refused(alpha, "DELETE", f"/v1/jobs/{job['id']}", 409, "ended", "succeeded")
    after = await alpha.json("GET", f"/v1/jobs/{job['id']}", 200)
    assert after["state"] == "succeeded", after


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1.5", "", "100000"])
async def test_list_jobs_bad_limit(alpha: Client, limit: str) -> None:
    await refused(alpha, "GET", f"/v1/jobs?limit={limit}", 400, "limit")


async def test_list_jobs_pagination(alpha: Client, noop: str) -> None:
    submitted = [(await alpha.submit(noop))["id"] for _ in range(3)]
    await finish(alpha, *submitted)

    seen: list[dict[str, Any]] = []
    pages: list[list[str]] = []
    path: str | None = "/v1/jobs?limit=2"
    while path is not None:
        page = await alpha.json("GET", path, 200)
        assert len(page["jobs"]) <= 2, page
        pages.append([j["id"] for j in page["jobs"]])
        seen.extend(page["jobs"])
        path = page["next"]
        assert len(pages) < 100, "pagination does not end"

    ids = [j["id"] for j in seen]
    assert len(ids) == len(set(ids)), ids
    # the newest three are ours, newest first: 3, 2 on the first page, then 1
    assert pages[0] == submitted[:0:-1], pages
    assert pages[1][0] == submitted[0], pages
    stamps = [j["submitted_at"] for j in seen]
    assert stamps == sorted(stamps, reverse=True), stamps


async def test_good_job_still_runs_after_bad_input(alpha: Client) -> None:
    [done] = await finish(alpha, (await alpha.submit(await alpha.upload(module("noop"))))["id"])
    assert done["state"] == "succeeded", done
    assert done["exit_code"] == 0, done


# -- JSON that Python parses but a job cannot carry ------------------------------------


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a": ' * 100_000,
                                 b'{"module": "x", "env": {"A": ' + b"[" * 50_000 + b"}}"],
                         ids=["arrays", "objects", "inside-a-field"])
async def test_job_deeply_nested_json(alpha: Client, raw: bytes) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, "nested", data=raw,
                  headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("raw", [b'{"module": "\xff\xfe"}', b'{"module": "caf\xe9"}',
                                 '{"module": "x"}'.encode("utf-16")],
                         ids=["invalid-bytes", "latin-1", "utf-16"])
async def test_job_body_not_utf8(alpha: Client, raw: bytes) -> None:
    await refused(alpha, "POST", "/v1/jobs", 400, "UTF-8", data=raw,
                  headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("field", "template"),
    [("args", '"args": ["ESC"]'), ("env", '"env": {"A": "ESC"}'), ("env", '"env": {"ESC": "v"}'),
     ("input", '"input": ["ok", "ESC"]')],
    ids=["arg", "env-value", "env-name", "input-record"],
)
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\udc80b"],
                         ids=["high", "low", "low-inside"])
async def test_job_lone_surrogate_is_refused(alpha: Client, noop: str, field: str,
                                             template: str, escape: str) -> None:
    """JSON escapes can spell half of a UTF-16 pair, which is no character at all: it
    cannot be encoded as UTF-8 for the module's args, env or stdin."""
    raw = ('{"module": "' + noop + '", ' + template.replace("ESC", escape) + "}").encode()
    await refused(alpha, "POST", "/v1/jobs", 400, field, "surrogate", data=raw,
                  headers={"Content-Type": "application/json"})


async def test_job_paired_surrogates_are_one_character(alpha: Client) -> None:
    """The escape pair for U+1F600 is a valid character and reaches the module intact."""
    echoenv = await alpha.upload(module("echoenv"))
    pair = "\\ud83d\\ude00"
    raw = ('{"module": "' + echoenv + f'", "args": ["{pair}"], "env": {{"FACE": "{pair}"}}}}'
           ).encode()
    job = await alpha.json("POST", "/v1/jobs", 202, data=raw,
                           headers={"Content-Type": "application/json"})
    [done] = await finish(alpha, job["id"])
    assert done["state"] == "succeeded", done
    assert done["args"] == ["\U0001f600"] and done["env"] == {"FACE": "\U0001f600"}, done
    output = await alpha.text(f"/v1/jobs/{job['id']}/output")
    assert "arg: \U0001f600\n" in output and "env: FACE=\U0001f600\n" in output, output


@pytest.mark.parametrize("fuel", [2**64, 2**64 + 1, 2**70], ids=["2^64", "2^64+1", "2^70"])
async def test_job_fuel_beyond_64_bits(alpha: Client, noop: str, fuel: int) -> None:
    """wasmtime counts fuel in an unsigned 64-bit integer: a larger value would wrap."""
    await refused(alpha, "POST", "/v1/jobs", 400, "limits.fuel",
                  json={"module": noop, "limits": {"fuel": fuel}})


async def test_job_largest_fuel_is_accepted(alpha: Client, noop: str) -> None:
    job = await alpha.submit(noop, limits={"fuel": 2**64 - 1})
    assert job["limits"]["fuel"] == 2**64 - 1, job
    [done] = await finish(alpha, job["id"])
    assert done["state"] == "succeeded", done
