"""Bridges from the runtime's thread to the agent's event loop.

The module runs in a worker thread and writes stdout/stderr through callbacks.
stdout becomes Kafka records on the loop; when the loop falls behind, the
module's thread waits (backpressure) instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

HIGH_WATER = 4 * 1024 * 1024


class LinePump:
    """Chunks from the module's thread in, complete lines out on the loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sink: Callable[[bytes], Awaitable[None]],
        *,
        max_line: int | None = None,
        too_long: Callable[[int], None] = lambda _: None,
    ) -> None:
        self._loop = loop
        self._sink = sink
        self._max_line = max_line
        self._too_long = too_long
        self._line = 0
        """Bytes since the last newline (module's thread)."""
        self._refused = False
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []
        self._pending = 0
        self._room = threading.Event()
        self._room.set()
        self._wake = asyncio.Event()
        self._closed = False
        self.error: BaseException | None = None

    def write(self, chunk: bytes) -> None:
        """Called from the module's thread. A line over ``max_line`` is never held
        whole: from the first byte past it, everything is dropped and
        ``too_long`` is told (the job is then stopped), so memory stays bounded
        by ``max_line`` plus :data:`HIGH_WATER` whatever the module writes."""
        if self._refused:
            return
        if self._max_line is not None and not self._fits(chunk):
            self._refused = True
            self._too_long(self._max_line)
            return
        with self._lock:
            first = not self._chunks
            self._chunks.append(chunk)
            self._pending += len(chunk)
            if self._pending > HIGH_WATER:
                self._room.clear()
        if first:
            self._loop.call_soon_threadsafe(self._wake.set)
        self._room.wait()

    def _fits(self, chunk: bytes) -> bool:
        assert self._max_line is not None
        last = chunk.rfind(b"\n")
        if last < 0:
            self._line += len(chunk)
            return self._line <= self._max_line
        if self._line + len(chunk) > self._max_line:
            start, first = 0, chunk.find(b"\n")
            if self._line + first > self._max_line:
                return False
            start = first + 1
            while (nl := chunk.find(b"\n", start)) >= 0:
                if nl - start > self._max_line:
                    return False
                start = nl + 1
        self._line = len(chunk) - last - 1
        return self._line <= self._max_line

    def close(self) -> None:
        """Called from the module's thread (or the loop) after the module ended."""
        with self._lock:
            self._closed = True
        self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        partial = b""
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                chunks, self._chunks = self._chunks, []
                self._pending = 0
                closed = self._closed
            data = partial + b"".join(chunks)
            *lines, partial = data.split(b"\n")
            try:
                for line in lines:
                    await self._sink(line)
                if closed:
                    if partial and not self._refused:
                        await self._sink(partial)
                    return
            except BaseException as e:
                self.error = e
                raise
            finally:
                self._room.set()


class LogSink:
    """stderr to a capped file in the slot, and to live subscribers."""

    def __init__(
        self,
        path: Path,
        *,
        limit: int,
        loop: asyncio.AbstractEventLoop,
        publish: Callable[[bytes], None],
    ) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 - closed in close()
        self._limit = limit
        self._written = 0
        self._loop = loop
        self._publish = publish
        self._cut = False

    def write(self, chunk: bytes) -> None:
        if self._cut:
            return
        try:
            self._write(chunk)
        except OSError:
            self._cut = True  # a full disk must not break the job; the log ends here

    def _write(self, chunk: bytes) -> None:
        room = self._limit - self._written
        if len(chunk) > room:
            chunk = chunk[:room] + b"\n[poold: log cut at the size limit]\n"
            self._cut = True
        self._written += len(chunk)
        self._file.write(chunk)
        self._file.flush()
        self._loop.call_soon_threadsafe(self._publish, chunk)

    def close(self) -> None:
        self._file.close()
