"""The one owner of background tasks (after kopf's ``aiokits/aiotasks``).

Every task that outlives the call that started it belongs to a
:class:`Supervisor`: it has a name, it is tracked until it ends, and how it
ends is never lost.

- :meth:`Supervisor.spawn`: a task that ends by itself (a worker's removal, a
  link's close). An error is logged with the task's name; nobody has to await it.
- :meth:`Supervisor.run`: a task meant to run until :meth:`Supervisor.stop` (a
  controller, a watch). If it ends or raises before that, it is logged and then
  either started again after the retry policy's pause (``restart``), or the
  supervisor is marked failed (:attr:`Supervisor.failed`), which stops the
  daemon rather than let it limp on without one of its parts.
- :meth:`Supervisor.stop`: cancels the tasks, newest first (so a task never
  outlives one it was started after), and waits for each. Safe to call twice.
- :meth:`Supervisor.wait`: waits for tasks that end by themselves.

Cancellation is never swallowed: a supervised task that is cancelled ends
cancelled, and so does a caller of :meth:`stop` that is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from poold.retry import RetryPolicy

log = structlog.get_logger(__name__)


class Supervisor:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: dict[asyncio.Task[Any], None] = {}
        """Insertion-ordered: :meth:`stop` cancels the newest first."""
        self._stopping = False
        self.failed = asyncio.Event()
        """Set when a task started with :meth:`run` (without ``restart``) ended or raised."""
        self.error: BaseException | None = None
        """What ended it, for the log line that stops the daemon."""

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` to its end in the background; an error is logged, not raised."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}:{name}")
        self._tasks[task] = None
        task.add_done_callback(self._ended)
        return task

    def run(
        self,
        factory: Callable[[], Awaitable[None]],
        *,
        name: str,
        restart: RetryPolicy | None = None,
        finishable: bool = False,
    ) -> asyncio.Task[None]:
        """Keep ``factory()`` running until :meth:`stop`. ``restart``: start it again
        after the policy's pause when it fails (the pause grows while it keeps
        failing); without it, a failure marks the supervisor failed. ``finishable``:
        ending without an error is its success (a start-up step), not a failure."""
        return self.spawn(self._keep(factory, name, restart, finishable), name=name)

    async def _keep(
        self, factory: Callable[[], Awaitable[None]], name: str, restart: RetryPolicy | None,
        finishable: bool,
    ) -> None:
        failures = 0
        while True:
            try:
                await factory()
                if finishable:
                    return
                error: BaseException = RuntimeError(f"{name} ended by itself")
            except Exception as e:
                error = e
            if self._stopping:
                return
            if restart is None:
                log.error("a background task died; stopping", owner=self.owner, task=name,
                          error=str(error) or repr(error), exc_info=error)
                self.error = error
                self.failed.set()
                return
            failures += 1
            pause = restart.delay(failures)
            restart.log_retry(log, what=f"{self.owner}: {name}", attempt=failures + 1,
                              error=error, pause_s=pause)
            await asyncio.sleep(pause)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("a background task failed", owner=self.owner,
                      task=task.get_name().removeprefix(f"{self.owner}:"),
                      error=str(error) or repr(error), exc_info=error)

    async def stop(self, *, ordered: bool = True) -> None:
        """Cancel every task, newest first, and wait for each to end before the next
        is cancelled (``ordered=False``: cancel all, then wait for all, for tasks
        that do not depend on each other, such as one per job). If the caller is
        cancelled meanwhile, the rest are cancelled at once and the cancellation
        goes on."""
        self._stopping = True
        try:
            while self._tasks:
                newest = list(reversed(self._tasks))
                batch = newest[:1] if ordered else newest
                for task in batch:
                    task.cancel()
                await asyncio.wait(batch)
                for task in batch:
                    self._tasks.pop(task, None)
        except asyncio.CancelledError:
            for task in self._tasks:
                task.cancel()
            raise
        finally:
            self._stopping = False

    async def wait(self) -> None:
        """Wait until every task has ended by itself (tests, draining)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
