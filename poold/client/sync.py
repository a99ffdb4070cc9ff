"""The synchronous client: :class:`AsyncClient`'s methods, called from plain code.

It runs the async client on an event loop of its own in a background thread,
so it also works where a loop is already running in the calling thread (a
Jupyter notebook), where ``asyncio.run`` would refuse. Streams become plain
iterators: each ``next()`` waits for the next item.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from poold.client.aio import AsyncClient, ModuleSource
from poold.client.contexts import DEFAULT_URL, resolve
from poold.client.models import Artifact, Job, JobResult, Module, Pool

T = TypeVar("T")


class Client:
    """A tenant's view of one poold, for scripts and notebooks. Use ``with Client(...)``
    or call :meth:`close`. Same arguments as :class:`AsyncClient`."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, **options: Any
                 ) -> None:
        self._aio = AsyncClient(url, token, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(
        cls, *, context: str | None = None, url: str | None = None, token: str | None = None,
        **options: Any,
    ) -> Client:
        """See :meth:`AsyncClient.from_config`."""
        target = resolve(url=url, token=token, context=context)
        return cls(target.url, target.token, **options)

    @property
    def url(self) -> str:
        return self._aio.url

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._aio.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    # -- plumbing ------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="poold-client",
                                          daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._running_loop())
        try:
            return future.result()
        except BaseException:
            # KeyboardInterrupt in the caller: stop the call on the loop too
            future.cancel()
            raise

    def _iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(stream)
            except StopAsyncIteration:
                return False, None

        async def close() -> None:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

        try:
            while True:
                more, item = self._run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            if self._loop is not None:
                # the loop may have been closed under us: nothing left to release then
                with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
                    self._run(close())

    # -- the API -------------------------------------------------------------------

    def upload_module(self, source: ModuleSource, *, timeout: float | None = None) -> Module:
        return self._run(self._aio.upload_module(source, timeout=timeout))

    def list_modules(self, *, timeout: float | None = None) -> list[Module]:
        return self._run(self._aio.list_modules(timeout=timeout))

    def submit(self, module: str | None = None, **fields: Any) -> Job:
        """See :meth:`AsyncClient.submit`."""
        return self._run(self._aio.submit(module, **fields))

    def iter_jobs(self, *, state: str | Iterable[str] | None = None, page_size: int = 100,
                  timeout: float | None = None) -> Iterator[Job]:
        return self._iterate(self._aio.iter_jobs(state=state, page_size=page_size,
                                                 timeout=timeout))

    def list_jobs(self, *, limit: int | None = 50, state: str | Iterable[str] | None = None,
                  timeout: float | None = None) -> list[Job]:
        return self._run(self._aio.list_jobs(limit=limit, state=state, timeout=timeout))

    def get_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        return self._run(self._aio.get_job(job_id, timeout=timeout))

    def cancel(self, job_id: str, *, timeout: float | None = None) -> Job:
        return self._run(self._aio.cancel(job_id, timeout=timeout))

    def wait(self, job_id: str, *, timeout: float | None = None, poll_max_s: float = 1.0
             ) -> Job:
        return self._run(self._aio.wait(job_id, timeout=timeout, poll_max_s=poll_max_s))

    def run(self, module: ModuleSource, *, timeout: float | None = None, **fields: Any
            ) -> JobResult:
        """See :meth:`AsyncClient.run`."""
        return self._run(self._aio.run(module, timeout=timeout, **fields))

    def run_many(
        self, module: ModuleSource, jobs: Iterable[Mapping[str, Any]], *,
        concurrency: int = 16, timeout: float | None = None,
    ) -> list[JobResult]:
        """Upload once, then :meth:`run` one job per item of ``jobs`` (each a dict of
        :meth:`AsyncClient.submit`'s fields), ``concurrency`` at a time; results in order."""
        return self._run(self._aio.run_many(module, jobs, concurrency=concurrency,
                                            timeout=timeout))

    def stream_export(self, *, format: str = "csv", since: str | None = None,
                      until: str | None = None, state: str | Iterable[str] | None = None,
                      timeout: float | None = None) -> Iterator[bytes]:
        return self._iterate(self._aio.stream_export(format=format, since=since, until=until,
                                                     state=state, timeout=timeout))

    def stream_output(self, job_id: str, *, follow: bool = True,
                      timeout: float | None = None) -> Iterator[str]:
        return self._iterate(self._aio.stream_output(job_id, follow=follow, timeout=timeout))

    def stream_output_bytes(self, job_id: str, *, follow: bool = True,
                            timeout: float | None = None) -> Iterator[bytes]:
        return self._iterate(self._aio.stream_output_bytes(job_id, follow=follow,
                                                           timeout=timeout))

    def output(self, job_id: str, *, timeout: float | None = None) -> list[str]:
        return self._run(self._aio.output(job_id, timeout=timeout))

    def stream_logs(self, job_id: str, *, follow: bool = True,
                    timeout: float | None = None) -> Iterator[str]:
        return self._iterate(self._aio.stream_logs(job_id, follow=follow, timeout=timeout))

    def logs(self, job_id: str, *, timeout: float | None = None) -> str:
        return self._run(self._aio.logs(job_id, timeout=timeout))

    def list_artifacts(self, job_id: str, *, timeout: float | None = None) -> list[Artifact]:
        return self._run(self._aio.list_artifacts(job_id, timeout=timeout))

    def get_artifact(self, job_id: str, name: str, *, timeout: float | None = None) -> bytes:
        return self._run(self._aio.get_artifact(job_id, name, timeout=timeout))

    def download_artifact(self, job_id: str, name: str,
                          directory: str | os.PathLike[str] = ".", *,
                          timeout: float | None = None) -> Path:
        return self._run(self._aio.download_artifact(job_id, name, directory,
                                                     timeout=timeout))

    def pool(self, *, timeout: float | None = None) -> Pool:
        return self._run(self._aio.pool(timeout=timeout))

    def tune_pool(self, changes: dict[str, Any], *, timeout: float | None = None) -> Pool:
        return self._run(self._aio.tune_pool(changes, timeout=timeout))

    def list_runtimes(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        return self._run(self._aio.list_runtimes(timeout=timeout))

    def health(self, *, timeout: float | None = None) -> bool:
        return self._run(self._aio.health(timeout=timeout))

    def ready(self, *, timeout: float | None = None) -> bool:
        return self._run(self._aio.ready(timeout=timeout))

    def openapi(self, *, timeout: float | None = None) -> dict[str, Any]:
        return self._run(self._aio.openapi(timeout=timeout))

    def request(self, method: str, path: str, *, data: bytes | None = None,
                content_type: str | None = None, timeout: float | None = None) -> bytes:
        """See :meth:`AsyncClient.request`."""
        return self._run(self._aio.request(method, path, data=data, content_type=content_type,
                                           timeout=timeout))

    def metrics(self, *, timeout: float | None = None) -> str:
        return self._run(self._aio.metrics(timeout=timeout))
