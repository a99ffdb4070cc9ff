"""The one owner of background tasks: named, tracked, failures logged, stopped in order."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from poold.retry import RetryPolicy
from poold.tasks import Supervisor

pytestmark = pytest.mark.timeout(30)


async def test_a_dead_task_is_logged_by_name_and_fails_its_owner() -> None:
    tasks = Supervisor("daemon")

    async def scheduler() -> None:
        raise KeyError("a bug")

    with capture_logs() as logs:
        tasks.run(scheduler, name="scheduler")
        async with asyncio.timeout(5):
            await tasks.failed.wait()
    assert isinstance(tasks.error, KeyError)
    assert [(e["event"], e["task"]) for e in logs] == [
        ("a background task died; stopping", "scheduler")]
    await tasks.stop()


async def test_a_task_that_ends_by_itself_is_a_failure_unless_it_may_finish() -> None:
    tasks = Supervisor("daemon")

    async def done() -> None:
        return

    tasks.run(done, name="activation", finishable=True)
    await tasks.wait()
    assert not tasks.failed.is_set()
    tasks.run(done, name="watch")
    async with asyncio.timeout(5):
        await tasks.failed.wait()
    assert "watch ended by itself" in str(tasks.error)


async def test_a_task_with_a_restart_policy_starts_again_and_logs_each_attempt() -> None:
    tasks = Supervisor("kubernetes")
    runs = 0
    running = asyncio.Event()

    async def watch() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise ConnectionResetError(f"dropped {runs}")
        running.set()
        await asyncio.Event().wait()

    policy = RetryPolicy(attempts=None, backoff_s=0.001, backoff_max_s=0.001)
    with capture_logs() as logs:
        tasks.run(watch, name="pod watch", restart=policy)
        async with asyncio.timeout(5):
            await running.wait()
    assert [(e["attempt"], e["error"]) for e in logs] == [("2/∞", "dropped 1"),
                                                          ("3/∞", "dropped 2")]
    assert not tasks.failed.is_set()
    await tasks.stop()
    assert len(tasks) == 0


async def test_stop_cancels_newest_first_and_waits_for_each() -> None:
    tasks = Supervisor("pool")
    ended: list[str] = []
    started = asyncio.Event()

    async def worker(name: str) -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    for name in ("controller", "removal", "link-close"):
        tasks.spawn(worker(name), name=name)
    await started.wait()
    await tasks.stop()
    assert ended == ["link-close", "removal", "controller"]
    await tasks.stop()  # safe twice


async def test_a_spawned_task_failure_is_logged_not_lost() -> None:
    tasks = Supervisor("pool")

    async def retire() -> None:
        raise OSError("the backend refused")

    with capture_logs() as logs:
        tasks.spawn(retire(), name="retire-poold-w-1")
        await tasks.wait()
    assert [(e["event"], e["task"], e["error"]) for e in logs] == [
        ("a background task failed", "retire-poold-w-1", "the backend refused")]


async def test_a_cancelled_stop_is_cancelled_and_leaves_no_task_running() -> None:
    tasks = Supervisor("pool")
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # cleanup that takes a while

    task = tasks.spawn(slow_to_stop(), name="slow")
    await asyncio.sleep(0)
    stopping = asyncio.create_task(tasks.stop())
    await asyncio.sleep(0)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    release.set()
    await asyncio.wait({task})
    assert task.cancelled()
