"""Interpreters the operator offers (``[runtimes.<name>]``): jobs name one and send a script.

At start-up each runtime's module is put into the module store by content, like
an upload but from the operator's disk (no upload size cap: an interpreter is
often ~100 MB), and handed to the background compiler, in both engine flavours
(plain, then fuel-metered for jobs with ``limits.fuel``), so that no worker ever
compiles it: a job of a flavour not compiled yet waits in the queue without a
worker (:class:`Runtimes` says when it may go). A job that names the runtime runs
that module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import structlog

from poold.atomic import copy_atomic
from poold.config import ConfigError, InterpreterSettings, Settings
from poold.modules.compiler import CompileLimits, uncompilable_marker
from poold.modules.shared import FOLDER, Published, SharedRuntimes
from poold.modules.store import ModuleStore
from poold.runtime.digest import file_sha256
from poold.runtime.engine import CompileCache, flavour
from poold.runtime.inspect import ModuleRejected, check_header
from poold.types import ModuleHash

log = structlog.get_logger(__name__)

FLAVOURS = (False, True)
"""The engine flavours a runtime is compiled in, in this order: plain (``fuel`` off)
first, since most jobs ask for no fuel, then fuel-metered."""


class RuntimeState(Enum):
    """Where one engine flavour of a runtime is (the runtime's ``state`` is its plain
    flavour's: whether jobs without ``limits.fuel`` can run)."""

    READY = "ready"
    """Jobs run; the interpreter is compiled (or, without a background compiler,
    the first job compiles it)."""
    COMPILING = "compiling"
    """Queued for the background compiler or being compiled. Jobs are accepted and
    wait in the queue, without a worker, until it is done."""
    FAILED = "failed"
    """It could not be compiled within its runtimes.<name>.compile_* caps."""
    UNAVAILABLE = "unavailable"
    """Its files are missing and the runtime is ``optional``."""


@dataclass(frozen=True)
class Waiting:
    """Why a runtime's job waits queued without a worker: the job record's ``waiting``,
    worked out when the record is read (as Kubernetes' ``state.waiting`` of a container:
    a reason for programs, a sentence for people)."""

    reason: str
    """``compiling`` (the flavour the job needs is being compiled, or queued for the
    compiler) or ``publishing`` (Kubernetes: compiled, not yet on the shared volume)."""
    message: str

    def public(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message}


def ago(seconds: float) -> str:
    """``40 s ago``, ``3 min ago``, ``1 h 5 min ago``."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s ago"
    if whole < 3600:
        return f"{whole // 60} min ago"
    return f"{whole // 3600} h {whole % 3600 // 60} min ago"


@dataclass(frozen=True)
class Runtime:
    name: str
    settings: InterpreterSettings
    sha256: ModuleHash | None
    """None when unavailable."""
    size: int | None
    unavailable: str | None = None
    """Why the runtime cannot run jobs (an ``optional`` runtime's missing files)."""
    shared: SharedRuntimes | None = None
    """Kubernetes backend: the runtimes published to the shared volume for runner
    pods; the runtime is ready only once its files and compiled form are there."""

    @property
    def max_script_bytes(self) -> int:
        return self.settings.max_script_kb * 1024

    def state(self, store: ModuleStore, *, fuel: bool = False) -> tuple[RuntimeState, str | None]:
        """Where the runtime's ``fuel`` (or plain) flavour is now, and why when it
        cannot run jobs. THE rule for whether a job of it may take a worker: READY
        means a worker finds the compiled interpreter and compiles nothing.

        A backend whose workers need more than this machine's compile cache adds its
        condition here (Kubernetes: the compiled artifact published on the shared
        volume: COMPILING until then) and calls :meth:`Runtimes.changed` when it
        holds, so that the jobs waiting for it are dispatched."""
        if self.sha256 is None:
            return RuntimeState.UNAVAILABLE, self.unavailable
        problem = store.compile_problem(self.sha256, fuel=fuel)
        if problem is not None:
            return RuntimeState.FAILED, problem
        precompiler = store.precompiler
        if precompiler is not None and not precompiler.cache.has(self.sha256, fuel=fuel):
            return RuntimeState.COMPILING, None
        if self.shared is not None:
            problem = self.shared.problem(self.name)
            if problem is not None:
                return RuntimeState.FAILED, problem
            if not self.shared.ready(self.name, self.sha256, fuel=fuel):
                return RuntimeState.COMPILING, None
        return RuntimeState.READY, None

    def waiting(self, store: ModuleStore, *, fuel: bool, now: float | None = None
                ) -> Waiting | None:
        """What a job of the flavour waits for, while :meth:`state` says COMPILING."""
        state, _ = self.state(store, fuel=fuel)
        if state is not RuntimeState.COMPILING or self.sha256 is None:
            return None
        name = repr(self.name)
        then = "; the job starts when it is done"
        precompiler = store.precompiler
        if precompiler is not None and not precompiler.cache.has(self.sha256, fuel=fuel):
            form = " its fuel-metered form, which jobs with limits.fuel need" if fuel else ""
            started = precompiler.started(self.sha256, fuel=fuel)
            if started is not None:
                since = (time.time() if now is None else now) - started
                return Waiting("compiling", (
                    f"waiting for the runtime {name} to finish compiling{form} (started "
                    f"{ago(since)}; a first compile takes minutes, once per machine){then}"))
            behind = ("behind its plain form" if fuel and precompiler.pending(self.sha256)
                      else "for poold's compiler")
            return Waiting("compiling", (
                f"waiting for the runtime {name} to be compiled{form and ' in' + form} "
                f"(queued {behind}){then}"))
        form = "'s fuel-metered form" if fuel else ""
        return Waiting("publishing", (
            f"waiting for the runtime {name}{form} to be published on the shared volume, "
            f"where runner pods read it (it is compiled; large files take a while to copy)"
            f"{then}"))

    def compile_limits(self) -> CompileLimits:
        key = f"runtimes.{self.name}"
        return CompileLimits(
            timeout_s=self.settings.compile_timeout_s, memory_mb=self.settings.compile_memory_mb,
            timeout_key=f"{key}.compile_timeout_s", memory_key=f"{key}.compile_memory_mb")

    def queue_compile(self, store: ModuleStore, *, fuel: bool) -> None:
        """Hand the flavour to the background compiler, under the runtime's own caps
        (``runtimes.<name>.compile_*``, not the uploads'). Nothing when it is cached,
        queued or compiling already."""
        if self.sha256 is None or store.precompiler is None:
            return
        store.precompiler.submit(
            tenant=f"runtime:{self.name}", sha256=self.sha256, path=store.path(self.sha256),
            limits=self.compile_limits(), fuel=fuel)

    def public(self, store: ModuleStore) -> dict[str, Any]:
        """What ``GET /v1/runtimes`` shows: never the host's paths."""
        states = {flavour(fuel=fuel): self.state(store, fuel=fuel) for fuel in FLAVOURS}
        state, why = states["plain"]
        fuel_why = states["fuel"][1]
        if why is None and fuel_why is not None:
            why = f"jobs with limits.fuel cannot run: {fuel_why}"
        return {
            "name": self.name,
            "state": state.value,
            "flavours": {name: found.value for name, (found, _) in states.items()},
            "error": why,
            "module": self.sha256,
            "size": self.size,
            "args": list(self.settings.args),
            "mounts": sorted(self.settings.mounts),
            "script_path": f"/script/{self.settings.script_name}",
            "max_script_bytes": self.max_script_bytes,
        }


class Runtimes(Mapping[str, Runtime]):
    """The operator's runtimes by name, and whether a job of one may take a worker now.

    The scheduler asks :meth:`ready` before it gives a runtime's job a worker and
    :meth:`refusal` to end a waiting job whose flavour can never run; it learns of
    changes through :meth:`on_change`. The rule itself is :meth:`Runtime.state`.
    :meth:`changed` is called after every compilation of the background compiler,
    and by whatever else makes a flavour ready (a backend's publishing)."""

    def __init__(self, found: Mapping[str, Runtime], store: ModuleStore) -> None:
        self._found = dict(found)
        self.store = store
        self._listeners: list[Callable[[], None]] = []
        if store.precompiler is not None:
            store.precompiler.listeners.append(lambda _sha, _fuel: self.changed())

    def __getitem__(self, name: str) -> Runtime:
        return self._found[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._found)

    def __len__(self) -> int:
        return len(self._found)

    def ready(self, name: str, *, fuel: bool) -> bool:
        """Whether a job of runtime ``name`` (with ``limits.fuel`` or not) may take a
        worker now: its worker would compile nothing. False for an unknown name."""
        runtime = self._found.get(name)
        if runtime is None:
            return False
        state, _ = runtime.state(self.store, fuel=fuel)
        if state is RuntimeState.COMPILING:
            # queued already, as a rule; again if its artifact went missing meanwhile
            # (a cleared cache folder), or the jobs waiting for it would wait forever
            runtime.queue_compile(self.store, fuel=fuel)
        return state is RuntimeState.READY

    def refusal(self, name: str, *, fuel: bool) -> str | None:
        """Why jobs of runtime ``name`` in that flavour cannot run on this server (a
        sentence naming the config key), or None while they can or will."""
        runtime = self._found.get(name)
        if runtime is None:
            return (f"the runtime {name!r} is no longer configured on this server "
                    f"(it offers: {runtime_names(self._found)}); submit the job again")
        state, why = runtime.state(self.store, fuel=fuel)
        if state is RuntimeState.UNAVAILABLE:
            return f"the runtime {name!r} is not available on this server: {why}"
        if state is RuntimeState.FAILED:
            jobs = "jobs with limits.fuel" if fuel else "jobs"
            return (f"the runtime {name!r} cannot run {jobs} on this server: "
                    f"{why}{self._fix(runtime, fuel=fuel)}")
        return None

    def _fix(self, runtime: Runtime, *, fuel: bool) -> str:
        """What the operator can do about a failed flavour: for a compilation, by its
        cause; a publishing failure's sentence ends with its own fix (modules.shared)."""
        if runtime.sha256 is None:
            return ""
        why = self.store.compile_problem(runtime.sha256, fuel=fuel)
        if why is None:
            return ""
        limits = runtime.compile_limits()
        if limits.timeout_key in why or limits.memory_key in why:
            return "; the operator can raise that limit and restart poold"
        return (f"; the operator can point runtimes.{runtime.name}.module at a module this "
                "server's wasmtime compiles, and restart poold")

    def waiting(self, name: str, *, fuel: bool) -> Waiting | None:
        """What a queued job of runtime ``name`` (with ``limits.fuel`` or not) waits for
        before it may take a worker; None when it need not wait, or never will run."""
        runtime = self._found.get(name)
        return None if runtime is None else runtime.waiting(self.store, fuel=fuel)

    def share(self, shared: SharedRuntimes) -> None:
        """Bind every runtime to its publication on the shared volume (the Kubernetes
        backend: :func:`share_runtimes`)."""
        self._found = {name: replace(r, shared=shared) for name, r in self._found.items()}
        shared.on_change(self.changed)

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a runtime's readiness may have changed."""
        self._listeners.append(callback)

    def changed(self) -> None:
        for listener in self._listeners:
            listener()


def install_runtimes(settings: Settings, store: ModuleStore) -> Runtimes:
    """Check every runtime's files, put its module into ``store`` and queue its
    compilation in both flavours under the runtime's own caps
    (``runtimes.<name>.compile_*``).

    Blocking (hashes files of ~100 MB): call it in a thread. Raises
    :class:`ConfigError` naming the key when a file or folder is missing, unless
    the runtime is ``optional``: then it is listed as unavailable, with the reason."""
    found: dict[str, Runtime] = {}
    for name, runtime in sorted(settings.runtimes.items()):
        key = f"runtimes.{name}"
        try:
            _check_files(key, runtime)
        except ConfigError as e:
            if not runtime.optional:
                raise
            log.warning("runtime unavailable", runtime=name, reason=str(e))
            found[name] = Runtime(name=name, settings=runtime, sha256=None, size=None,
                                  unavailable=str(e))
            continue
        digest, size = file_sha256(runtime.module)
        sha = ModuleHash(digest)
        target = store.path(sha)
        if not target.exists():
            # a copy, not a link: the operator may rewrite their file in place later
            copy_atomic(runtime.module, target)
        installed = found[name] = Runtime(name=name, sha256=sha, size=size, settings=runtime)
        if store.precompiler is not None:
            store.precompiler.pinned.add(sha)
            for fuel in FLAVOURS:
                # a restart retries a compilation that failed (perhaps with raised caps)
                uncompilable_marker(target, fuel=fuel).unlink(missing_ok=True)
                installed.queue_compile(store, fuel=fuel)
    return Runtimes(found, store)


def share_runtimes(runtimes: Runtimes, *, settings: Settings, store: ModuleStore,
                   cache: CompileCache) -> SharedRuntimes:
    """For the Kubernetes backend: bind the runtimes to what publishes them to the
    shared volume (``<slots.root>/runtimes``), whose ``run()`` the daemon starts. A
    runtime is then ready in a flavour only once published, and the jobs waiting for
    it are dispatched when it is."""
    shared = SharedRuntimes(
        root=settings.slots.root / FOLDER, cache=cache, fsync=settings.slots.fsync,
        runtimes=[Published(name=r.name, sha256=r.sha256, module=store.path(r.sha256),
                            mounts=[r.settings.mounts[g] for g in sorted(r.settings.mounts)])
                  for r in runtimes.values() if r.sha256 is not None])
    runtimes.share(shared)
    if store.precompiler is not None:
        store.precompiler.listeners.append(lambda _sha, _fuel: shared.wake())
    return shared


def _check_files(key: str, runtime: InterpreterSettings) -> None:
    if not runtime.module.is_file():
        raise ConfigError(
            f"{key}.module: {runtime.module} is not a file; fetch the interpreter "
            "(make runtimes) or correct the path")
    for guest, host in runtime.mounts.items():
        if not host.is_dir():
            raise ConfigError(f"{key}.mounts.{guest!r}: {host} is not a folder; fetch the "
                              "interpreter (make runtimes) or correct the path")
    with open(runtime.module, "rb") as f:
        try:
            check_header(f.read(8))
        except ModuleRejected as e:
            raise ConfigError(f"{key}.module: {runtime.module}: {e}") from e


def runtime_names(runtimes: Mapping[str, Runtime]) -> str:
    return ", ".join(sorted(runtimes)) if runtimes else "none (the operator configures them)"

