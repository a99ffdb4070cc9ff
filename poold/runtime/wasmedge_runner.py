"""The WasmEdge driver: runs a module with the ``wasmedge`` CLI as a subprocess.

Cluster runner pods carry the WasmEdge CLI instead of wasmtime. Each job runs as

    wasmedge --force-interpreter --dir /out:<host out dir> [--env K=V ...]
             --time-limit <ms> --memory-page-limit <memory_mb * 16>
             [--gas-limit <fuel>] -- <module.wasm> [args ...]

(an argv list, never a shell), stdin from the job's input file or /dev/null,
stdout and stderr piped and handed to the sinks in chunks by two reader
threads. The process gets only ``PATH`` (plus ``process_env``) as its
environment; WasmEdge shows the module only the ``--env`` values anyway.

NOT TESTED AGAINST A REAL WASMEDGE. WasmEdge cannot be installed on the
machines this is developed on (it is in neither PyPI nor Debian, and nothing
else can be downloaded), so the tests drive this class with a stand-in,
``tests/fixtures/fake_wasmedge.py``, which accepts the same flags and runs the
module with wasmtime. What the driver and the stand-in assume about the real
CLI was read from WasmEdge's source (0.13/0.14), not seen in a run:

* Exit status: the module's WASI exit code when it exits (0 when ``_start``
  returns); 134 (128 + SIGABRT) when execution is aborted, which covers the
  ``--time-limit`` cancel ("execution interrupted"), gas exhaustion ("cost
  limit exceeded") and every trap; 1 when the module cannot be loaded,
  validated or instantiated.
* Runtime errors are spdlog lines, ``[YYYY-mm-dd HH:MM:SS.mmm] [error] ...``.
  spdlog's default sink is *stdout*, so they may arrive mixed into the
  module's output: such lines are taken out of stdout (they must not become
  output records), passed to the stderr sink instead, and read to tell the
  outcome apart. A module that prints a line in exactly that format fools
  this, but only about its own job.
* ``memory.grow`` past ``--memory-page-limit`` returns -1 to the module and
  logs "Memory Instance: Memory grow page failed, exceeded limited N page
  size in configuration."; the module then exits or traps as it likes.
* ``--gas-limit`` is parsed as a signed 32-bit number: fuel above 2**31 - 1
  is refused here rather than left to fail inside WasmEdge. WasmEdge charges
  gas per instruction (cost 1 by default), close to but not the same as
  wasmtime's fuel.
* Without a valid ``_start`` WasmEdge switches to reactor mode and would call
  the export named by the first argument; with no arguments it stops with
  "A function name is required when reactor mode is enabled.", which maps to
  the wasmtime driver's "no _start" error.

AOT: an uploaded module is never run as native code. WasmEdge runs a
``.wasm`` in AOT mode *by itself* when the file carries a ``wasmedge`` AOT
section (its "universal wasm" format), and that section is native code that
comes with the upload. Passing the plain ``.wasm`` is not enough, so every run
adds ``--force-interpreter`` (WasmEdge >= 0.11.2), which ignores such a
section. It also keeps the limits honest: AOT code only checks gas and the
time limit when it was compiled with gas measuring and ``--interruptible``.
No flag that enables AOT or JIT is ever passed.

Limits: ``--time-limit`` is the job's timeout; a watchdog SIGKILLs the
process ``timeout_s + 1`` s after the spawn in case WasmEdge does not stop
(a module blocked in a host call cannot be interrupted), and
:meth:`WasmedgeRunner.interrupt` kills it at once.
"""

from __future__ import annotations

import collections
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO

from poold.runtime.runner import (
    CANCELLED_BEFORE_START,
    InterruptReason,
    Outcome,
    RunRequest,
    RunResult,
    Sink,
    cancelled,
    exited,
    out_of_fuel,
    timed_out,
    trapped,
)

PAGES_PER_MIB = 16
"""WebAssembly pages are 64 KiB."""
MAX_GAS = 2**31 - 1
ABORTED = 128 + signal.SIGABRT
"""WasmEdge's exit status when execution was aborted (trap, time or gas limit)."""
WATCHDOG_GRACE_S = 1.0
CHUNK = 64 * 1024
NOT_INSTALLED = "the wasmedge runtime is not installed in this worker (POOLD_AGENT_WASMEDGE)"
NO_START = "the module has no _start function (is it a WASI command?)"

_LOG_LINE = re.compile(
    rb"\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}\] "
    rb"\[(?:\x1b\[[0-9;]*m)?(?:trace|debug|info|warning|error|critical)(?:\x1b\[[0-9;]*m)?\] "
)
_REACTOR = b"A function name is required when reactor mode is enabled."
_CODE_SUFFIX = re.compile(r",\s*Code:\s*0x[0-9a-fA-F]+\s*$")
_SETUP_FAILURES: tuple[tuple[str, Outcome, str], ...] = (
    ("loading failed: ", "error", "the module could not be compiled"),
    ("validation failed: ", "error", "the module could not be compiled"),
    ("instantiation failed: ", "failed", "the module could not start"),
)
_KEEP_LINES = 200
_HOLD = 64 * 1024
_TAIL = 128


class WasmedgeRunner:
    """Runs modules with the WasmEdge CLI; only ``/out`` of the host is visible to them.

    ``binary`` is a name looked up on ``PATH`` or a path. ``process_env`` adds
    variables for the wasmedge process itself (e.g. ``WASMEDGE_PLUGIN_PATH``);
    the module never sees them.
    """

    def __init__(
        self, binary: str = "wasmedge", *, process_env: Mapping[str, str] | None = None
    ) -> None:
        self.binary = binary
        self._process_env = dict(process_env or {})
        self._lock = threading.Lock()
        self._reason: InterruptReason | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def process_env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", os.defpath), **self._process_env}

    def _executable(self, env: Mapping[str, str]) -> str | None:
        return shutil.which(self.binary, path=env.get("PATH", os.defpath))

    def flags(self, request: RunRequest) -> list[str]:
        """Everything after the binary on the command line."""
        flags = ["--force-interpreter", "--dir", f"/out:{os.path.abspath(request.out_dir)}"]
        for key, value in request.env:
            flags += ["--env", f"{key}={value}"]
        flags += ["--time-limit", str(max(1, math.ceil(request.timeout_s * 1000)))]
        flags += ["--memory-page-limit", str(request.memory_mb * PAGES_PER_MIB)]
        if request.fuel is not None:
            flags += ["--gas-limit", str(request.fuel)]
        return [*flags, "--", os.path.abspath(request.wasm_path), *request.args]

    def warm_up(self) -> None:
        """Run ``wasmedge --version`` once, so the first job does not pay for a
        cold page cache; any failure is the first job's to report."""
        env = self.process_env()
        executable = self._executable(env)
        if executable is None:
            return
        try:
            subprocess.run(
                [executable, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=env, timeout=60, check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return

    def interrupt(self, reason: InterruptReason) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
            proc = self._proc
        if proc is not None:
            _kill(proc)

    def run(
        self, request: RunRequest, *, stdout: Sink, stderr: Sink, on_start: Callable[[], None]
    ) -> RunResult:
        try:
            return self._run(request, stdout, stderr, on_start)
        finally:
            with self._lock:
                self._proc = None
                self._reason = None

    def _run(
        self, request: RunRequest, stdout: Sink, stderr: Sink, on_start: Callable[[], None]
    ) -> RunResult:
        with self._lock:
            reason = self._reason
        if reason == "cancel":
            return RunResult("cancelled", None, CANCELLED_BEFORE_START)
        if reason == "timeout":
            return timed_out(request)
        problem = _unpassable(request)
        if problem is not None:
            return RunResult("error", None, problem)
        env = self.process_env()
        executable = self._executable(env)
        if executable is None:
            return RunResult("error", None, NOT_INSTALLED)
        try:
            stdin: IO[bytes] | None = (
                open(request.stdin_path, "rb") if request.stdin_path is not None else None  # noqa: SIM115
            )
        except OSError as e:
            return RunResult("error", None, f"the module's input could not be opened: {e}")

        on_start()
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                [executable, *self.flags(request)],
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0,
                close_fds=True, start_new_session=True,
            )
        except FileNotFoundError:
            return RunResult("error", None, NOT_INSTALLED)
        except OSError as e:
            return RunResult("error", None, f"the wasmedge runtime could not be started: {e}")
        finally:
            if stdin is not None:
                stdin.close()

        with self._lock:
            self._proc = proc
            interrupted = self._reason is not None
        if interrupted:
            _kill(proc)
        watchdog = threading.Timer(
            request.timeout_s + WATCHDOG_GRACE_S, self.interrupt, args=("timeout",)
        )
        watchdog.daemon = True
        watchdog.start()

        out_log, err_log = _RuntimeLog(), _RuntimeLog()
        err_lock = threading.Lock()
        failures: list[BaseException] = []

        def to_stderr(data: bytes) -> None:
            with err_lock:
                stderr(data)

        def from_stdout(data: bytes) -> None:
            module, runtime = out_log.feed(data)
            if module:
                stdout(module)
            if runtime:
                to_stderr(runtime)

        def stdout_done() -> None:
            module, runtime = out_log.finish()
            if module:
                stdout(module)
            if runtime:
                to_stderr(runtime)

        def from_stderr(data: bytes) -> None:
            to_stderr(data)
            err_log.feed(data)

        assert proc.stdout is not None
        assert proc.stderr is not None
        readers = [
            threading.Thread(
                target=self._pump, args=(proc, proc.stdout, from_stdout, stdout_done, failures),
                name="wasmedge-stdout", daemon=True,
            ),
            threading.Thread(
                target=self._pump, args=(proc, proc.stderr, from_stderr, err_log.finish, failures),
                name="wasmedge-stderr", daemon=True,
            ),
        ]
        try:
            for reader in readers:
                reader.start()
            code = proc.wait()
            for reader in readers:
                reader.join()
        finally:
            watchdog.cancel()
        elapsed = time.monotonic() - started
        with self._lock:
            reason = self._reason
        if failures:
            return RunResult(
                "error", None, f"the module's output could not be passed on: {failures[0]!r}"
            )
        return outcome(request, code, reason, [*out_log.lines, *err_log.lines], elapsed)

    def _pump(
        self,
        proc: subprocess.Popen[bytes],
        pipe: IO[bytes],
        deliver: Callable[[bytes], None],
        done: Callable[[], object],
        failures: list[BaseException],
    ) -> None:
        """Read one pipe to its end; after a sink failed, drain it without delivering."""
        try:
            while chunk := pipe.read(CHUNK):
                if failures:
                    continue
                try:
                    deliver(chunk)
                except Exception as e:
                    failures.append(e)
                    _kill(proc)
            if not failures:
                try:
                    done()
                except Exception as e:
                    failures.append(e)
        finally:
            pipe.close()


def outcome(
    request: RunRequest,
    code: int,
    reason: InterruptReason | None,
    runtime: list[str],
    elapsed: float,
) -> RunResult:
    """The job's result from the exit status, our own interrupt (if any) and
    WasmEdge's log lines (their messages, without the date and level)."""
    if code < 0:
        if reason == "cancel":
            return cancelled()
        if reason == "timeout":
            return timed_out(request)
        return RunResult(
            "failed", None, f"the wasmedge runtime was killed by {_signal_name(-code)}"
        )
    if code == 0:
        return RunResult("succeeded", 0, None)
    text = "\n".join(runtime).lower()
    if code == ABORTED:
        if request.fuel is not None and "cost limit exceeded" in text:
            return out_of_fuel(request)
        if "interrupted" in text:
            return timed_out(request)
        trap = _detail(runtime, "execution failed: ")
        if trap is not None:
            return RunResult(
                "failed", None, _with_memory_note(trapped(trap), runtime, request)
            )
        if elapsed >= request.timeout_s:
            return timed_out(request)
    elif code == 1:
        for marker, state, sentence in _SETUP_FAILURES:
            detail = _detail(runtime, marker)
            if detail is not None:
                return RunResult(state, None, f"{sentence}: {detail}")
        if any(line.startswith(_REACTOR.decode()) for line in runtime):
            return RunResult("error", None, NO_START)
    return RunResult(
        "failed", code,
        _with_memory_note(exited(code), runtime, request),
    )


def _unpassable(request: RunRequest) -> str | None:
    """Why the request cannot be put on a wasmedge command line, if it cannot."""
    if request.fuel is not None and request.fuel > MAX_GAS:
        return (
            f"the fuel limit {request.fuel} is more than the wasmedge runtime accepts "
            f"(at most {MAX_GAS})"
        )
    for key, _ in request.env:
        if key.startswith("-"):
            return f"the environment variable name {key!r} cannot be passed to wasmedge"
    if request.read_only:
        return ("this job needs read-only folders (a runtime's), which the wasmedge driver "
                "does not mount yet; run runtimes on a wasmtime pool")
    return None


def _detail(runtime: list[str], marker: str) -> str | None:
    for line in runtime:
        at = line.find(marker)
        if at >= 0:
            detail = _CODE_SUFFIX.sub("", line[at + len(marker):]).strip()
            return detail or None
    return None


def _with_memory_note(message: str, runtime: list[str], request: RunRequest) -> str:
    """Point at the memory cap when WasmEdge refused to grow the module's memory."""
    for line in runtime:
        lowered = line.lower()
        if ("memory" in lowered and "limit" in lowered) or "out of memory" in lowered:
            return (
                f"{message}, after it reached its memory limit of {request.memory_mb} MiB "
                "(raise limits.memory_mb if it needs more)"
            )
    return message


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.kill()
    except OSError:
        return


class _RuntimeLog:
    """Finds WasmEdge's own log lines in one output stream.

    :meth:`feed` splits what arrives into the module's bytes and WasmEdge's
    lines, a whole line at a time: an unfinished last line waits for the rest
    (the agent splits stdout into lines anyway) unless it grows past 64 KiB.
    The messages of the lines found are kept in :attr:`lines` (the last 200).
    """

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=_KEEP_LINES)
        self._partial = b""

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        buf = self._partial + data
        end = buf.rfind(b"\n") + 1
        module, runtime = self._split(buf[:end])
        self._partial = buf[end:]
        if len(self._partial) > _HOLD:
            module += self._partial[:-_TAIL]
            self._partial = self._partial[-_TAIL:]
        return module, runtime

    def finish(self) -> tuple[bytes, bytes]:
        rest, self._partial = self._partial, b""
        return self._split(rest)

    def _split(self, text: bytes) -> tuple[bytes, bytes]:
        if not text or (b"] [" not in text and _REACTOR not in text):
            return text, b""
        module: list[bytes] = []
        runtime: list[bytes] = []
        for line in text.splitlines(keepends=True):
            found = _LOG_LINE.search(line)
            if found is not None:
                module.append(line[: found.start()])
                runtime.append(line[found.start():])
                message = line[found.end():]
            elif line.startswith(_REACTOR):
                runtime.append(line)
                message = line
            else:
                module.append(line)
                continue
            self.lines.append(message.decode("utf-8", "replace").strip())
        return b"".join(module), b"".join(runtime)
