"""The local backend: each worker is an agent process on this machine.

Workers are forked by :mod:`poold.backends.forkserver`, so a recycle costs a
fork rather than a new interpreter. The slot root is a plain folder. A claim
needs no fence here (this daemon is the only one that can see the workers),
but it is still recorded so the behaviour matches the cluster backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from pathlib import Path

import structlog

from poold.backends.base import BackendUnavailable, EventSink, WorkerEvent
from poold.backends.forkserver import PARENT_ENV
from poold.tasks import Supervisor
from poold.types import JobId, PodName, TenantName

log = structlog.get_logger(__name__)


class LocalBackend:
    name = "local"

    def __init__(
        self,
        *,
        slots_root: Path,
        agent_env: dict[str, str],
    ) -> None:
        self._slots_root = slots_root
        self._agent_env = agent_env
        self._proc: asyncio.subprocess.Process | None = None
        self.tasks = Supervisor("local-backend")
        """The reader of the fork server's events."""
        self._sink: EventSink | None = None
        self._claims: dict[PodName, JobId] = {}
        self._alive: set[PodName] = set()
        self._pids: dict[PodName, int] = {}
        self._tokens: dict[PodName, str] = {}
        self._hello = asyncio.Event()
        self._stopping = False
        self._lock = asyncio.Lock()

    async def start(self, sink: EventSink) -> None:
        if self._proc is not None:
            return
        self._sink = sink
        ended = end_leftovers(self._slots_root)
        if ended:
            log.warning("ended worker processes left by an earlier poold", pids=ended)
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env[PARENT_ENV] = str(os.getpid())
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poold.backends.forkserver",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=1024 * 1024,
        )
        self.tasks.spawn(self._read(), name="events")
        try:
            await asyncio.wait_for(self._hello.wait(), 30)
        except TimeoutError as e:
            await self.stop()
            raise BackendUnavailable("the local fork server did not start within 30 s") from e

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._stopping = True
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await self.tasks.stop()

    async def _send(self, command: dict[str, object]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise BackendUnavailable("the local fork server is not running")
        async with self._lock:
            proc.stdin.write(json.dumps(command).encode() + b"\n")
            try:
                await proc.stdin.drain()
            except (ConnectionError, BrokenPipeError) as e:
                raise BackendUnavailable("the local fork server went away") from e

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        stream = self._proc.stdout
        while line := await stream.readline():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                log.warning("unreadable line from the fork server", line=line[:200])
                continue
            self._handle(event)
        if not self._stopping:
            log.warning("the local fork server exited")
        for pod in list(self._alive):
            self._gone(pod, "the local fork server exited")

    def _handle(self, event: dict[str, object]) -> None:
        kind = event.get("event")
        pod = PodName(str(event.get("pod", "")))
        if kind == "hello":
            self._hello.set()
        elif kind == "spawned":
            self._pids[pod] = int(str(event["pid"]))
        elif kind == "ready" and pod in self._alive:
            assert self._sink is not None
            self._sink(WorkerEvent("ready", pod, endpoint=str(event["endpoint"]),
                                   token=self._tokens.get(pod)))
        elif kind == "exited":
            if "signal" in event:
                sig = int(str(event["signal"]))
                reason = f"the worker process was killed by {signal.Signals(sig).name}"
            else:
                reason = f"the worker process exited with code {event.get('code')}"
            self._gone(pod, reason)

    def _gone(self, pod: PodName, reason: str) -> None:
        self._alive.discard(pod)
        self._pids.pop(pod, None)
        self._claims.pop(pod, None)
        self._tokens.pop(pod, None)
        if self._sink is not None:
            self._sink(WorkerEvent("gone", pod, reason=reason))

    async def create(self, pod: PodName) -> None:
        env = dict(self._agent_env)
        env["POOLD_AGENT_SLOT"] = str(self._slots_root / pod)
        # each worker its own secret, passed through the fork server's pipe
        env["POOLD_AGENT_TOKEN"] = self._tokens[pod] = secrets.token_urlsafe(32)
        # Alive from now on: the child announces "ready" on the pipe itself, and
        # that line can overtake the fork server's own "spawned" line.
        self._alive.add(pod)
        try:
            await self._send({"op": "spawn", "pod": pod, "env": env})
        except BackendUnavailable:
            self._alive.discard(pod)
            raise

    async def claim(self, pod: PodName, job: JobId) -> bool:
        if pod not in self._alive or pod in self._claims:
            return False
        self._claims[pod] = job
        return True

    async def release_claim(
        self, pod: PodName, *, job: JobId, tenant: TenantName, jobs: int
    ) -> bool:
        """The pod's job succeeded and it stays for another of ``tenant`` (``pool.reuse``).
        Nothing outlives this daemon here, so the tenant is the pool's to remember."""
        if pod not in self._alive or self._claims.get(pod) != job:
            return False
        del self._claims[pod]
        return True

    async def delete(self, pod: PodName) -> None:
        if pod in self._alive:
            await self._send({"op": "kill", "pod": pod, "signal": int(signal.SIGKILL)})

    def pid_of(self, pod: PodName) -> int | None:
        """The worker's process id while it lives (for tests and diagnostics)."""
        return self._pids.get(pod)


FORKSERVER_MODULE = b"poold.backends.forkserver"


def end_leftovers(slots_root: Path) -> list[int]:
    """SIGKILL worker processes of this slots root that an earlier poold left.

    A local worker runs with its slot as working directory and the fork
    server's command line, which is how it is recognised (its slot may already
    be deleted: the kernel then shows the path with " (deleted)"). Called
    before the fork server starts and before orphan slots are removed, so no
    worker of ours exists yet and none is left running on a removed slot.
    """
    root = str(slots_root.resolve()) + os.sep
    ended: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return ended
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone, or not ours to look at
        if not cwd.startswith(root) or FORKSERVER_MODULE not in cmdline:
            continue
        pid = int(entry.name)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            ended.append(pid)
    return ended
