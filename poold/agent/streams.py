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
        self, loop: asyncio.AbstractEventLoop, sink: Callable[[bytes], Awaitable[None]]
    ) -> None:
        self._loop = loop
        self._sink = sink
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []
        self._pending = 0
        self._room = threading.Event()
        self._room.set()
        self._wake = asyncio.Event()
        self._closed = False
        self.error: BaseException | None = None

    def write(self, chunk: bytes) -> None:
        """Called from the module's thread."""
        with self._lock:
            first = not self._chunks
            self._chunks.append(chunk)
            self._pending += len(chunk)
            if self._pending > HIGH_WATER:
                self._room.clear()
        if first:
            self._loop.call_soon_threadsafe(self._wake.set)
        self._room.wait()

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
                    if partial:
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
