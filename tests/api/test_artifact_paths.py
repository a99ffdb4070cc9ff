"""Artifact names cannot reach outside the job's own artifacts.

Two checks stand in the way, and each must hold on its own: the API serves
only names the job's artifact listing gives (``Api.get_artifact``), and the
file store refuses any name that resolves outside the job's artifact folder
(``JobFiles.artifact``, tested in ``tests/jobs/test_files.py``).

The requests here are written on a raw socket: an HTTP client normalises
``../`` before sending, so the server would only ever see a path the router
answers 404 to, and neither check would be exercised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import pytest
import pytest_asyncio

from poold.daemon import Daemon
from poold.jobs.files import JobFiles
from poold.types import JobId
from tests.api.helpers import finish
from tests.support.daemon import TOKENS, Client, make_settings, serving
from tests.support.wasm_fixtures import module

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, broker: str
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    # alpha runs one job at a time, so a job can be kept queued (with its input on disk)
    settings = make_settings(tmp_path_factory.mktemp("artifact-paths"), broker,
                             tenants__alpha__max_concurrent_jobs=1)
    async with serving(settings) as served_:
        yield served_


@pytest.fixture(scope="module")
def alpha(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    return Client(served[0], served[1], "alpha")


@pytest.fixture(scope="module")
def beta(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    return Client(served[0], served[1], "beta")


class Targets:
    """Files on poold's disk that one of alpha's jobs must not reach by name."""

    def __init__(self, job: dict[str, Any], others: dict[str, Path]) -> None:
        self.job = job
        self.others = others


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def targets(alpha: Client, beta: Client) -> AsyncIterator[Targets]:
    """A finished job of alpha's with artifacts, and next to it on disk: its own log,
    another tenant's artifact, and the saved input of a job that is still queued."""
    files = alpha.daemon.files
    assert files is not None
    [job] = await finish(alpha, (await alpha.submit(
        await alpha.upload(module("artifacts")), args=["mine"]))["id"])
    assert job["state"] == "succeeded", job
    [other] = await finish(beta, (await beta.submit(
        await beta.upload(module("artifacts")), args=["beta-secret"]))["id"])
    assert other["state"] == "succeeded", other
    # alpha's only slot is taken by a long job, so the next one waits with its input saved
    busy = await alpha.submit(await alpha.upload(module("ticker")), limits={"timeout_s": 60})
    async with alpha.request("GET", f"/v1/jobs/{busy['id']}/output?follow=true") as r:
        assert await r.content.readline() == b"tick 1\n"
    queued = await alpha.submit(await alpha.upload(module("upper")), input=["queued-secret"])
    assert alpha.daemon.store.get(JobId(queued["id"])).state.value == "queued"  # type: ignore[union-attr]
    others = {
        "own-log": files.log_path(JobId(job["id"])),
        "other-tenant-artifact": files.artifact_dir(JobId(other["id"])) / "sub" / "args.txt",
        "queued-input": files.input_path(JobId(queued["id"])),
    }
    for name, path in others.items():
        assert path.is_file(), f"{name}: {path} should exist for this test to mean anything"
    yield Targets(job, others)
    for pending in (queued, busy):
        await alpha.json("DELETE", f"/v1/jobs/{pending['id']}", 200)


async def raw_get(client: Client, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no normalisation), with alpha's token."""
    url = urlsplit(client.base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {TOKENS['alpha']}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def traversals(job: dict[str, Any], target: str, path: Path, files: JobFiles) -> list[str]:
    """Ways to spell ``path`` relative to ``job``'s artifact folder, not normalised."""
    rel = Path(*[".."] * len(files.artifact_dir(JobId(job["id"])).relative_to(files.root).parts),
               path.relative_to(files.root)).as_posix()
    assert rel.startswith("../"), (target, rel)
    return [
        rel,                                       # ../stderr.log
        rel.replace("/", "%2F"),                   # ..%2Fstderr.log
        rel.replace(".", "%2e").replace("/", "%2f"),  # %2e%2e%2fstderr.log
        "sub/../" + rel,                           # through a real artifact folder
    ]


@pytest.mark.parametrize("target", ["own-log", "other-tenant-artifact", "queued-input"])
async def test_artifact_name_cannot_leave_the_job(
    alpha: Client, targets: Targets, target: str
) -> None:
    files = alpha.daemon.files
    assert files is not None
    path = targets.others[target]
    secret = path.read_bytes()
    for name in traversals(targets.job, target, path, files):
        status, body = await raw_get(alpha, f"/v1/jobs/{targets.job['id']}/artifacts/{name}")
        assert status == 404, (name, status, body[:200])
        assert not secret or secret not in body, name
    # the same spelling reaches a listed artifact, so the requests are well formed
    status, body = await raw_get(alpha, f"/v1/jobs/{targets.job['id']}/artifacts/sub/args.txt")
    assert (status, body) == (200, b"mine\n")


@pytest.mark.parametrize("target", ["own-log", "other-tenant-artifact", "queued-input"])
async def test_api_serves_only_listed_names_even_if_the_file_store_would_not_refuse(
    alpha: Client, targets: Targets, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's own check, alone: with a file store that would follow any name."""
    files = alpha.daemon.files
    assert files is not None

    def unchecked(job: JobId, name: str) -> Path | None:
        path = files.artifact_dir(job) / name
        return path if path.is_file() else None

    monkeypatch.setattr(files, "artifact", unchecked)
    path = targets.others[target]
    for name in traversals(targets.job, target, path, files):
        followed = unchecked(JobId(targets.job["id"]), unquote(name))
        assert followed is not None, f"the stand-in must follow {name}"
        status, body = await raw_get(alpha, f"/v1/jobs/{targets.job['id']}/artifacts/{name}")
        assert status == 404, (name, status, body[:200])
