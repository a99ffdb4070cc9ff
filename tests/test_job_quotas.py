"""Per-job quotas on what a job writes: under /out (held while it writes), its
output records, and the length of one record. A job over a quota ends
``failed`` with an error that names it; a record is never split."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from poold.data.kafka import MAX_RECORD_BYTES
from tests.support.daemon import Client, DaemonFactory, wait_done
from tests.support.wasm_fixtures import module

QUOTAS = {
    "runtime__max_artifacts_mb": 1,
    "runtime__max_artifact_files": 100,
    "runtime__max_output_records": 10,
    "runtime__max_output_mb": 1,
    "pool__min_idle": 1,
}


@pytest.fixture
async def tight(start_daemon: DaemonFactory, session: Any) -> Client:
    daemon = await start_daemon(**QUOTAS)
    return Client(daemon, session, "alpha")


async def test_writing_past_the_out_quota_fails_the_write_and_the_job(tight: Client) -> None:
    job = await tight.run(module("outfill"))
    assert job["state"] == "failed", job
    assert "runtime.max_artifacts_mb" in job["error"] and "1 MiB" in job["error"]
    # the module saw its write fail, as on a full disk, long before its 64 MiB
    assert "outfill: write failed" in await tight.text(f"/v1/jobs/{job['id']}/logs")
    assert job["usage"]["artifacts_bytes"] <= 1024 * 1024 + 1, job["usage"]


async def test_too_many_files_under_out_fail_the_job(tight: Client) -> None:
    job = await tight.run(module("manyfiles"))
    assert job["state"] == "failed", job
    assert "runtime.max_artifact_files" in job["error"] and "100 files" in job["error"]
    assert len(job["artifacts"]) == 100
    # what was made past the quota before the job was stopped is named, not kept
    assert job["artifacts_dropped"], job
    assert all("runtime.max_artifact_files" in d["reason"] for d in job["artifacts_dropped"])


async def test_a_job_within_its_quotas_is_untouched(tight: Client) -> None:
    job = await tight.run(module("upper"), input=["a", "b"])
    assert job["state"] == "succeeded", job
    job = await tight.run(module("artifacts"), args=["x"])
    assert job["state"] == "succeeded", job


async def test_too_many_output_records_fail_the_job(tight: Client) -> None:
    job = await tight.run(module("upper"), input=[f"r{i}" for i in range(25)])
    assert job["state"] == "failed", job
    assert "runtime.max_output_records" in job["error"]
    out = (await tight.text(f"/v1/jobs/{job['id']}/output")).splitlines()
    assert out == [f"R{i}" for i in range(10)], "records past the quota were sent"


async def test_too_many_output_bytes_fail_the_job(tight: Client) -> None:
    sha = await tight.upload(module("upper"))
    body = json.dumps({"module": sha, "input": ["x" * 400_000] * 3}).encode()
    submitted = await tight.json("POST", "/v1/jobs", 202, data=io.BytesIO(body),
                                 headers={"Content-Type": "application/json"})
    job = (await wait_done(tight.daemon, submitted["id"])).public()
    assert job["state"] == "failed", job
    assert "runtime.max_output_mb" in job["error"]


async def test_a_line_longer_than_a_record_ends_the_job_and_is_never_split(
    alpha: Client,
) -> None:
    """100 MiB without a newline: the job fails saying why, nothing of the line
    becomes a record, and the worker never holds the line."""
    job = await alpha.run(module("longline"), limits={"memory_mb": 16})
    assert job["state"] == "failed", job
    assert f"more than {MAX_RECORD_BYTES} bytes" in job["error"], job
    assert await alpha.text(f"/v1/jobs/{job['id']}/output") == ""
    rss = job["usage"]["rss_peak_bytes"]
    print(f"worker peak RSS with a 100 MiB line: {rss / 2**20:.0f} MiB")
    assert rss < 160 * 2**20, f"the worker peaked at {rss / 2**20:.0f} MiB"


async def test_an_input_record_larger_than_a_record_is_refused_at_submit(alpha: Client) -> None:
    sha = await alpha.upload(module("upper"))
    body = await alpha.json("POST", "/v1/jobs", 400,
                            json={"module": sha, "input": ["ok", "y" * (MAX_RECORD_BYTES + 1)]})
    assert "record 1 is" in body["error"] and str(MAX_RECORD_BYTES) in body["error"]
    # at the maximum it is taken, and comes back whole
    job = await alpha.run(module("upper"), input=["z" * MAX_RECORD_BYTES])
    assert job["state"] == "succeeded", job
    out = await alpha.text(f"/v1/jobs/{job['id']}/output")
    assert out == "Z" * MAX_RECORD_BYTES + "\n"
