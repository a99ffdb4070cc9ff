"""The wasmtime driver: compile-cache lookup, WASI sandbox, limits, outcome."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from poold.atomic import write_atomic
from poold.errors import ModuleError
from poold.runtime.digest import file_sha256
from poold.runtime.engine import CompileCache, NotCompiled, make_engine
from poold.runtime.inspect import MAX_MEMORIES, MAX_TABLES
from poold.runtime.runner import (
    InterruptReason,
    RunRequest,
    RunResult,
    RuntimeUsage,
    Sink,
    cancelled,
    exited,
    out_of_fuel,
    over_quota,
    timed_out,
    trapped,
)

PAGE = 64 * 1024
MIB = 1024 * 1024
TABLE_ELEMENT_BYTES = 8
"""What wasmtime spends per table element (its documented figure)."""
TABLE_SHARE = 16
"""1/16 of a job's memory cap is set aside for table elements, the rest is linear memory."""
WARM_UP_WAT = '(module (memory (export "memory") 1) (func (export "_start")))'
NOT_COMPILED = (
    "this worker found no usable compiled form of the runtime's interpreter, and a worker "
    "never compiles one (that needs minutes of CPU and GBs of memory): poold's background "
    "compiler compiles it (again, when it was removed), under runtimes.<name>.compile_*, "
    "and on Kubernetes publishes it to the shared volume; submit the job again when "
    "GET /v1/runtimes shows the runtime ready ({reason})")
HOST_CALL_ANSWER = -1
"""What the stub of ``host.call`` answers: "no host function", for a runtime
built to call into an embedding host that poold is not."""


def _host_call(_a: int, _b: int, _c: int, _d: int) -> int:
    return HOST_CALL_ANSWER


def _interpreter_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    """WASI plus the ``host.call`` stub: only for operators' runtimes, so a tenant's
    upload still has WASI and nothing else to import."""
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    i32 = wasmtime.ValType.i32()
    linker.define_func("host", "call", wasmtime.FuncType([i32] * 4, [i32]), _host_call)
    return linker


def _discard(_: bytes) -> None:
    return None


_PREBUILT: dict[bool, tuple[wasmtime.Engine, wasmtime.Linker]] = {}
_PREWARMED = threading.Event()


def prebuild() -> None:
    """Build both engines with their WASI linkers once, in the process that forks
    the workers (the local fork server), and run the warm-up module there: each
    worker inherits all of it instead of paying ~5 ms of CPU for its own. The
    warm-up module is compiled on a single-threaded engine and loaded into ours,
    so no compiler thread exists when the fork server forks."""
    for fuel in (False, True):
        if fuel not in _PREBUILT:
            engine = make_engine(fuel=fuel)
            linker = wasmtime.Linker(engine)
            linker.define_wasi()
            _PREBUILT[fuel] = (engine, linker)
    engine, linker = _PREBUILT[False]
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.cranelift_opt_level = "speed"
    config.parallel_compilation = False
    compiled = wasmtime.Module(wasmtime.Engine(config), WARM_UP_WAT).serialize()
    _run_warm_up(engine, linker, wasmtime.Module.deserialize(engine, compiled))
    _PREWARMED.set()


def _run_warm_up(engine: wasmtime.Engine, linker: wasmtime.Linker, module: wasmtime.Module) -> None:
    store = wasmtime.Store(engine)
    store.set_limits(memory_size=PAGE * 4)
    store.set_epoch_deadline(1)
    wasi = wasmtime.WasiConfig()
    wasi.stdout_custom = _discard
    wasi.stderr_custom = _discard
    store.set_wasi(wasi)
    start = linker.instantiate(store, module).exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    start(store)


@dataclass(frozen=True)
class StoreBudget:
    """How ``limits.memory_mb`` is split inside one wasmtime store.

    wasmtime's store limits apply per memory and per table, never to their
    sum, so the sum is bounded by the counts: at most one linear memory
    (which gets 15/16 of the cap) and :data:`MAX_TABLES` tables that share the
    last 1/16. Whatever a module does, its memories and tables together stay
    within ``memory_mb``.
    """

    memory_bytes: int
    table_elements: int
    """Per table."""

    @classmethod
    def of(cls, memory_mb: int) -> StoreBudget:
        total = memory_mb * MIB
        per_table = total // TABLE_SHARE // MAX_TABLES // TABLE_ELEMENT_BYTES
        return cls(
            memory_bytes=total - per_table * MAX_TABLES * TABLE_ELEMENT_BYTES,
            table_elements=per_table,
        )

    def apply(self, store: wasmtime.Store) -> None:
        store.set_limits(
            memory_size=self.memory_bytes, table_elements=self.table_elements,
            instances=1, tables=MAX_TABLES, memories=MAX_MEMORIES,
        )


class WasmtimeRunner:
    """Runs modules with wasmtime; only ``/out`` of the host is visible to them."""

    def __init__(self, cache: CompileCache) -> None:
        self._cache = cache
        self._engines = {fuel: engine for fuel, (engine, _) in _PREBUILT.items()}
        self._linkers = {(fuel, False): linker for fuel, (_, linker) in _PREBUILT.items()}
        self._lock = threading.Lock()
        self._reason: InterruptReason | None = None
        self._engine: wasmtime.Engine | None = None
        self._measured: tuple[wasmtime.Store, wasmtime.Instance, int | None] | None = None
        """The last run's store, instance and fuel limit, for :meth:`runtime_usage`."""

    def engine(self, *, fuel: bool) -> wasmtime.Engine:
        with self._lock:
            if fuel not in self._engines:
                self._engines[fuel] = make_engine(fuel=fuel)
            return self._engines[fuel]

    def linker(self, engine: wasmtime.Engine, *, fuel: bool,
               interpreter: bool = False) -> wasmtime.Linker:
        """One linker per engine with WASI defined (and, for runtimes, the
        ``host.call`` stub): it holds no per-job state (that lives in each Store),
        so it is built once, ahead of the job."""
        with self._lock:
            key = (fuel, interpreter)
            if key not in self._linkers:
                if interpreter:
                    self._linkers[key] = _interpreter_linker(engine)
                else:
                    linker = wasmtime.Linker(engine)
                    linker.define_wasi()
                    self._linkers[key] = linker
            return self._linkers[key]

    def warm_up(self) -> None:
        """Run a trivial module once, ahead of the first job and off its latency
        path: the first store, WASI context and instance of a process are the
        slow ones. Nothing to do in a worker forked after :func:`prebuild`."""
        if _PREWARMED.is_set():
            return
        engine = self.engine(fuel=False)
        # through the cache, as a job's module would come: compiled once for
        # all workers, then only loaded (compiling per worker costs CPU)
        wasm = bytes(wasmtime.wat2wasm(WARM_UP_WAT))
        sha = hashlib.sha256(wasm).hexdigest()
        source = self._cache.root / "warm-up.wasm"
        if not source.exists():
            source.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(source, wasm, fsync=False)
        module, _ = self._cache.load(engine, sha, source, fuel=False)
        _run_warm_up(engine, self.linker(engine, fuel=False), module)

    def reset(self) -> None:
        """Before a worker's next job: forget the last one's interrupt and store."""
        with self._lock:
            self._reason = None
            self._engine = None
            self._measured = None

    def interrupt(self, reason: InterruptReason) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
            engine = self._engine
        if engine is not None:
            engine.increment_epoch()

    def run(
        self, request: RunRequest, *, stdout: Sink, stderr: Sink, on_start: Callable[[], None]
    ) -> RunResult:
        self._measured = None  # a runner that is reused never reports an earlier run
        fuel = request.fuel is not None
        engine = self.engine(fuel=fuel)
        try:
            module, cached = self._cache.load(
                engine, request.sha256, request.wasm_path, fuel=fuel,
                check=None if request.verified else _checker(request.sha256),
                compile=request.may_compile,
            )
        except NotCompiled as e:
            return RunResult("error", None, NOT_COMPILED.format(reason=e))
        except wasmtime.WasmtimeError as e:
            return RunResult("error", None, f"the module could not be compiled: {_first_line(e)}")
        except DeliveryDamaged as e:
            return RunResult("error", None, str(e))

        store = wasmtime.Store(engine)
        budget = StoreBudget.of(request.memory_mb)
        budget.apply(store)
        limit = budget.memory_bytes
        store.set_epoch_deadline(1)
        if request.fuel is not None:
            store.set_fuel(request.fuel)
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["module.wasm", *request.args]
        wasi.env = [list(pair) for pair in request.env]
        if request.stdin_path is not None:
            wasi.stdin_file = str(request.stdin_path)
        wasi.stdout_custom = stdout
        wasi.stderr_custom = stderr
        wasi.preopen_dir(str(request.out_dir), "/out")
        for host, guest in request.read_only:
            try:
                # this wasmtime-py's form of read-only dir and file permissions
                wasi.preopen_dir(str(host), guest, False)
            except wasmtime.WasmtimeError:
                return RunResult("error", None, f"the folder {host} could not be opened to "
                                 f"be mounted read-only at {guest} in the worker (a runtime's "
                                 "mounts must be absolute paths the workers can read)", cached)
        store.set_wasi(wasi)
        linker = self.linker(engine, fuel=fuel, interpreter=request.interpreter)
        try:
            instance = linker.instantiate(store, module)
            self._measured = (store, instance, request.fuel)
            entry = _entry(instance.exports(store), interpreter=request.interpreter)
            if entry is None:
                return RunResult(
                    "error", None, "the module has no _start function (is it a WASI command?)"
                    if not request.interpreter else "the runtime's module has neither _start "
                    "(a WASI command) nor run (a reactor); check runtimes.<name>.module",
                    cached,
                )
        except (wasmtime.WasmtimeError, wasmtime.Trap) as e:
            return RunResult(
                "failed", None, _start_failure(e, budget, request), cached
            )

        timer = threading.Timer(request.timeout_s, self.interrupt, args=("timeout",))
        timer.daemon = True
        with self._lock:
            self._engine = engine
            interrupted_early = self._reason is not None
        if interrupted_early:
            engine.increment_epoch()
        on_start()
        timer.start()
        try:
            status = None
            for func in entry:
                status = func(store)
        except wasmtime.ExitTrap as e:
            code = e.code
            if code == 0:
                return RunResult("succeeded", 0, None, cached)
            return RunResult(
                "failed", code, _with_memory_note(exited(code), instance, store, limit, request),
                cached,
            )
        except wasmtime.Trap as e:
            return self._trap(e, instance, store, limit, request, cached)
        except wasmtime.WasmtimeError as e:
            text = _first_line(e)
            if "exit with invalid exit status" in text:
                return RunResult(
                    "failed", None,
                    "the module exited with a status outside 0..125, which WASI cannot report",
                    cached,
                )
            return RunResult("failed", None, f"the module failed: {_reason(e)}", cached)
        finally:
            timer.cancel()
        if isinstance(status, int) and status != 0:
            # a reactor's run() returns the exit code instead of calling proc_exit
            return RunResult(
                "failed", status, _with_memory_note(exited(status),
                                                    instance, store, limit, request), cached,
            )
        return RunResult("succeeded", 0, None, cached)

    def compiled(self, sha256: str, *, fuel: bool) -> bool:
        """Whether a job of this module would start from the compile cache, without
        reading the delivered bytes (so the agent need not hash them)."""
        return self._cache.has(sha256, fuel=fuel)

    def runtime_usage(self) -> RuntimeUsage:
        """Linear memory never shrinks, so its size after the run is its peak."""
        if self._measured is None:
            return RuntimeUsage()
        store, instance, fuel = self._measured
        exports = instance.exports(store)
        memories = [m for m in (exports[n] for n in exports) if isinstance(m, wasmtime.Memory)]
        peak = sum(m.data_len(store) for m in memories) if memories else None
        consumed = None
        if fuel is not None:
            consumed = fuel - store.get_fuel()
        return RuntimeUsage(memory_peak_bytes=peak, fuel_consumed=consumed)

    def _trap(
        self,
        trap: wasmtime.Trap,
        instance: wasmtime.Instance,
        store: wasmtime.Store,
        limit: int,
        request: RunRequest,
        cached: bool,
    ) -> RunResult:
        code = trap.trap_code
        if code == wasmtime.TrapCode.INTERRUPT:
            with self._lock:
                reason = self._reason
            if reason == "cancel":
                return cancelled(cached=cached)
            if reason == "limit":
                return over_quota(cached=cached)
            return timed_out(request, cached=cached)
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return out_of_fuel(request, cached=cached)
        message = trapped(f"{_reason(trap)}{_where(trap)}")
        return RunResult(
            "failed", None, _with_memory_note(message, instance, store, limit, request), cached
        )


class DeliveryDamaged(ModuleError):
    """The bytes delivered to the worker are not the module the job names."""


def _checker(sha256: str) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        if file_sha256(path)[0] != sha256:
            raise DeliveryDamaged("the module delivered to the worker does not match its "
                                  "sha256; the delivery was damaged, submit the job again")
    return check


def _entry(exports: Mapping[str, object], *, interpreter: bool) -> list[wasmtime.Func] | None:
    """What to call, in order: a command's ``_start``; for a runtime that is a WASI
    reactor, ``_initialize`` (when exported) and then ``run``, whose result is the
    exit code. A tenant's upload must be a command."""
    start = exports.get("_start")
    if isinstance(start, wasmtime.Func):
        return [start]
    if not interpreter:
        return None
    run = exports.get("run")
    if not isinstance(run, wasmtime.Func):
        return None
    initialize = exports.get("_initialize")
    return [initialize, run] if isinstance(initialize, wasmtime.Func) else [run]


def _with_memory_note(
    message: str,
    instance: wasmtime.Instance,
    store: wasmtime.Store,
    limit: int,
    request: RunRequest,
) -> str:
    """Point at the memory cap when the module failed close to it.

    wasmtime refuses a ``memory.grow`` past the cap without telling the host,
    so the module sees an allocation failure and exits or traps; a module
    that ends that way with its memory nearly full most likely hit the cap.
    """
    memory = instance.exports(store).get("memory")
    if not isinstance(memory, wasmtime.Memory):
        return message
    used = memory.size(store) * PAGE
    if used + PAGE > limit or used >= 0.75 * limit:
        return (
            f"{message}, with {used / 2**20:.1f} MiB of its memory limit of "
            f"{request.memory_mb} MiB in use (raise limits.memory_mb if it needs more)"
        )
    return message


def _start_failure(error: BaseException, budget: StoreBudget, request: RunRequest) -> str:
    reason = _reason(error)
    if "memory count" in reason or "table count" in reason:
        return (
            f"the module could not start: it has more than {MAX_MEMORIES} linear memory or "
            f"{MAX_TABLES} tables, which poold does not run ({reason})"
        )
    if "resource limit exceeded" in reason or "exceeds memory limits" in reason:
        return (
            f"the module could not start within its memory limit of {request.memory_mb} MiB "
            f"(at most {MAX_MEMORIES} linear memory of {budget.memory_bytes / MIB:.2f} MiB, "
            f"{MAX_TABLES} tables of {budget.table_elements} elements): {reason}; raise "
            "limits.memory_mb if it needs more"
        )
    return f"the module could not start: {reason}"


def _reason(error: BaseException) -> str:
    """What went wrong, from wasmtime's message: the "Caused by" part when there is
    one (the first line is only "error while executing at wasm backtrace:")."""
    text = str(error).strip()
    _, _, cause = text.partition("Caused by:")
    causes = [line.strip() for line in cause.splitlines() if line.strip()]
    if not causes:
        return _first_line(error)
    parts = [c.split(":", 1)[1].strip() if c[:2].isdigit() and ":" in c else c
             for c in causes]
    parts = [p.removeprefix("wasm trap: ") for p in parts]
    return ": ".join(parts)


def _where(trap: wasmtime.Trap) -> str:
    frames = trap.frames
    if not frames:
        return ""
    top = frames[0]
    name = top.func_name or f"function {top.func_index}"
    return f" (in {name}, at module offset {top.module_offset:#x})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def default_out_dir(slot: Path) -> Path:
    return slot / "out" / "artifacts"
