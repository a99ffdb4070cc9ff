"""Background compilation of uploaded modules: fair across tenants, out of process.

Each new upload is compiled into the shared cache so its first job does not
pay for it. The compiler runs as a separate process (``poold.runtime.compile``)
capped in memory and time, one at a time, and the waiting modules are taken
round-robin by tenant: a tenant that uploads fifty costly modules delays its
own, while another tenant's next upload is compiled after at most one of them.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import structlog

from poold.config import ModuleSettings
from poold.metrics import Metrics
from poold.retry import RetryPolicy
from poold.runtime.engine import CompileCache, flavour
from poold.tasks import Supervisor

log = structlog.get_logger(__name__)

T = TypeVar("T")

RESTART = RetryPolicy(attempts=None, backoff_s=1.0, backoff_max_s=60.0)
"""If the compile loop dies (a bug), it starts again after this pause: uploads keep
being compiled ahead of their first job."""
PRUNE_EVERY_S = 60.0
"""How often the compile cache is brought back within modules.compile_cache_mb when
no upload is being compiled."""


class FairQueue(Generic[T]):
    """Items queued per tenant, taken round-robin: one of each tenant's in turn."""

    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[T]] = OrderedDict()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def put(self, tenant: str, item: T) -> None:
        self._queues.setdefault(tenant, deque()).append(item)
        self._ready.set()

    def take(self) -> tuple[str, T] | None:
        """The next item, or None when empty. The tenant served goes to the back."""
        if not self._queues:
            return None
        tenant, queue = self._queues.popitem(last=False)
        item = queue.popleft()
        if queue:
            self._queues[tenant] = queue
        return tenant, item

    async def get(self) -> tuple[str, T]:
        while True:
            taken = self.take()
            if taken is not None:
                return taken
            self._ready.clear()
            await self._ready.wait()


def uncompilable_marker(wasm: Path, *, fuel: bool = False) -> Path:
    """Beside a stored module: why it could not be compiled within the limits (in
    that engine flavour). Its jobs are refused while it exists; uploading the module
    again retries (a runtime's: restarting poold)."""
    return wasm.with_suffix(".uncompilable-fuel" if fuel else ".uncompilable")


@dataclass(frozen=True)
class CompileLimits:
    """The caps of one compilation and the config keys that set them (for messages)."""

    timeout_s: float
    memory_mb: int
    timeout_key: str = "modules.compile_timeout_s"
    memory_key: str = "modules.compile_memory_mb"

    @classmethod
    def for_uploads(cls, settings: ModuleSettings) -> CompileLimits:
        return cls(timeout_s=settings.compile_timeout_s, memory_mb=settings.compile_memory_mb)


@dataclass(frozen=True)
class CompileOrder:
    sha256: str
    path: Path
    limits: CompileLimits
    fuel: bool = False
    """The engine flavour: fuel-metered (jobs with ``limits.fuel``) or plain."""


Compiled = Callable[[str, bool], None]
"""Told (sha256, fuel) after each compilation, whatever its outcome."""


class Precompiler:
    """Owns the compile task; ``start()``/``stop()`` are safe to call twice."""

    def __init__(self, *, cache: CompileCache, settings: ModuleSettings,
                 metrics: Metrics | None = None) -> None:
        self.cache = cache
        self.settings = settings
        self.metrics = metrics
        self.queue: FairQueue[CompileOrder] = FairQueue()
        self.done: list[tuple[str, str, str]] = []
        """(sha256, flavour, outcome) of each compilation in order, for tests and logs."""
        self.listeners: list[Compiled] = []
        """Called after each compilation (the runtimes wake the jobs waiting for one)."""
        self._queued: set[tuple[str, bool]] = set()
        self.tasks = Supervisor("precompiler")
        self.pinned: set[str] = set()
        """Modules whose artifacts pruning keeps (the operator's runtimes)."""
        self._changed = asyncio.Event()
        self._busy = False
        self._started: dict[tuple[str, bool], float] = {}
        """(sha256, fuel) being compiled now -> when it started (``time.time()``)."""

    async def start(self) -> None:
        if not self.tasks:
            self.tasks.run(self._run, name="compile loop", restart=RESTART)

    async def stop(self) -> None:
        # the compile subprocess is killed by _compile's own cleanup
        await self.tasks.stop()

    def submit(self, *, tenant: str, sha256: str, path: Path,
               limits: CompileLimits | None = None, fuel: bool = False) -> None:
        """Queue a compilation under ``limits`` (default: the uploads' caps in
        ``[modules]``; an operator's runtime brings its own), in the plain engine
        flavour or the fuel-metered one."""
        if (sha256, fuel) in self._queued or self.cache.has(sha256, fuel=fuel):
            return
        self._queued.add((sha256, fuel))
        self.queue.put(tenant, CompileOrder(
            sha256, path, limits or CompileLimits.for_uploads(self.settings), fuel=fuel))
        self._note()

    def pending(self, sha256: str, *, fuel: bool = False) -> bool:
        """Queued or being compiled now."""
        return (sha256, fuel) in self._queued

    def started(self, sha256: str, *, fuel: bool = False) -> float | None:
        """When the flavour's compilation began (``time.time()``), while it runs; None
        when it is queued or not wanted."""
        return self._started.get((sha256, fuel))

    async def begun(self, sha256: str, *, fuel: bool = False, within_s: float) -> None:
        """For tests: wait until the flavour's compilation has begun (or ended)."""
        async with asyncio.timeout(within_s):
            while (sha256, fuel) in self._queued and (sha256, fuel) not in self._started:
                await self._changed.wait()

    async def idle(self, within_s: float) -> None:
        """For tests: wait until nothing is queued or compiling."""
        async with asyncio.timeout(within_s):
            while len(self.queue) or self._busy:
                await self._changed.wait()

    def _note(self) -> None:
        if self.metrics is not None:
            self.metrics.compiles_queued.set(len(self.queue))
        self._changed.set()
        self._changed = asyncio.Event()

    async def _run(self) -> None:
        await self._prune()
        while True:
            try:
                async with asyncio.timeout(PRUNE_EVERY_S):
                    tenant, order = await self.queue.get()
            except TimeoutError:
                # workers compile into the cache too (on a miss, and every fuel-metered
                # job), so the cache is kept within its size between uploads as well
                await self._prune()
                continue
            self._busy = True
            self._started[(order.sha256, order.fuel)] = time.time()
            self._note()
            try:
                with structlog.contextvars.bound_contextvars(tenant=tenant):
                    outcome = await self._compile(order)
            finally:
                self._queued.discard((order.sha256, order.fuel))
                self._started.pop((order.sha256, order.fuel), None)
                self._busy = False
            self.done.append((order.sha256, flavour(fuel=order.fuel), outcome))
            if self.metrics is not None:
                self.metrics.compiles.labels(outcome).inc()
            self._note()
            for listener in self.listeners:
                listener(order.sha256, order.fuel)
            await self._prune()

    async def _prune(self) -> None:
        removed = await asyncio.to_thread(
            self.cache.prune, self.settings.compile_cache_mb * 1024 * 1024,
            keep=frozenset(self.pinned))
        if removed:
            log.info("compile cache pruned (modules.compile_cache_mb)", removed=len(removed))

    async def _compile(self, order: CompileOrder) -> str:
        s = order.limits
        if order.fuel:
            try:
                plain = uncompilable_marker(order.path).read_text()
            except FileNotFoundError:
                plain = None
            if plain is not None:
                # fuel-metered code is larger: under the same caps it would fail too,
                # after up to runtimes.<name>.compile_timeout_s more of a core
                log.warning("fuel flavour not compiled: the plain one failed",
                            module=order.sha256, error=plain)
                self._mark(order, f"not compiled, since its plain flavour could not be "
                                  f"within the same caps: {plain}")
                return "failed"
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poold.runtime.compile",
            "--cache", str(self.cache.root.parent), "--memory-mb", str(s.memory_mb),
            "--cpu-s", str(s.timeout_s), *(["--fuel"] if order.fuel else []),
            order.sha256, str(order.path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(s.timeout_s):
                _, stderr = await proc.communicate()
        except TimeoutError:
            log.warning("compilation took too long and was stopped", key=s.timeout_key,
                        module=order.sha256, flavour=flavour(fuel=order.fuel),
                        timeout_s=s.timeout_s)
            self._mark(order, f"compiling it took longer than {s.timeout_s:g} s "
                              f"({s.timeout_key})")
            return "timeout"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode == 0:
            log.info("module compiled into the cache", module=order.sha256,
                     flavour=flavour(fuel=order.fuel),
                     seconds=round(time.monotonic() - started, 1))
            return "compiled"
        error = stderr.decode("utf-8", "replace")[-500:].strip()
        log.warning("compilation failed", module=order.sha256, exit_code=proc.returncode,
                    flavour=flavour(fuel=order.fuel), memory_mb=s.memory_mb, error=error)
        if (proc.returncode or 0) < 0 or "memory allocation" in error:
            # the runtime aborts (SIGABRT) when an allocation fails under the cap
            why = (f"compiling it needs more than {s.memory_mb} MiB of memory "
                   f"({s.memory_key})")
        else:
            why = f"the compiler refused it: {error.splitlines()[-1] if error else 'no reason'}"
        self._mark(order, why)
        return "failed"

    @staticmethod
    def _mark(order: CompileOrder, why: str) -> None:
        try:
            uncompilable_marker(order.path, fuel=order.fuel).write_text(why)
        except OSError as e:  # the module was removed meanwhile: nothing to refuse
            log.warning("could not record the failed compilation", error=str(e))
