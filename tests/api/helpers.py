"""Helpers shared by the API test files."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from poold.types import JobId
from tests.support.daemon import Client, wait_done


async def finish(client: Client, *job_ids: str) -> list[dict[str, Any]]:
    """Wait until the jobs end; on a timeout fail with their records and the pool figures."""
    try:
        await asyncio.gather(*(wait_done(client.daemon, i, timeout=30) for i in job_ids))
    except TimeoutError:
        records = [client.daemon.store.get(JobId(i)) for i in job_ids]
        pool = client.daemon.pool.figures() if client.daemon.pool else None
        pytest.fail(f"jobs did not end within 30 s: {records}; pool: {pool}")
    return [await client.json("GET", f"/v1/jobs/{i}", 200) for i in job_ids]


async def still_serving(client: Client) -> None:
    async with client.session.get(client.base + "/healthz") as r:
        assert r.status == 200
        assert await r.json() == {"status": "ok"}
