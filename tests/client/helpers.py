"""Helpers shared by the client and command-line test files."""

from __future__ import annotations

import asyncio

from poold.daemon import Daemon
from poold.jobs.model import JobState
from poold.types import JobId


async def until_running(daemon: Daemon, job_id: str) -> None:
    """Wait, on the store's change events, until the job's module runs."""
    job = daemon.store.get(JobId(job_id))
    assert job is not None
    async with asyncio.timeout(30):
        while job.state is not JobState.RUNNING:
            assert not job.state.terminal, job
            job = await daemon.store.wait_change(job.id, job)
