"""The WasmEdge driver, run against a STAND-IN for the WasmEdge CLI.

WasmEdge cannot be installed on the machines these tests run on (it is in
neither PyPI nor Debian), so ``tests/fixtures/fake_wasmedge.py`` plays the
``wasmedge`` binary: it accepts the same flags and runs the real WASI test
modules with wasmtime, exiting and logging the way WasmEdge's source says the
real CLI does. These tests therefore check the driver's side of the contract
(command line, environment, streams, limits, outcome mapping), not WasmEdge.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import wasmtime

from poold.agent.runtimes import make_runner
from poold.agent.settings import AgentConfigError, AgentSettings
from poold.runtime.runner import InterruptReason, RunRequest, RunResult
from poold.runtime.wasmedge_runner import (
    NO_START,
    NOT_INSTALLED,
    WasmedgeRunner,
    _RuntimeLog,
    outcome,
)
from poold.runtime.wasmtime_runner import WasmtimeRunner
from tests.support.wasm_fixtures import module, truncated, with_custom_section

FAKE = Path(__file__).resolve().parents[1] / "fixtures" / "fake_wasmedge.py"
PYTHON_BIN = str(Path(sys.executable).parent)  # its python3 can import wasmtime


@dataclass
class Run:
    result: RunResult
    stdout: bytes
    stderr: bytes
    started: int
    threads: set[str] = field(default_factory=set)

    @property
    def out(self) -> str:
        return self.stdout.decode()

    @property
    def err(self) -> str:
        return self.stderr.decode()


@pytest.fixture
def argv_log(tmp_path: Path) -> Path:
    return tmp_path / "argv.jsonl"


def fake_runner(argv_log: Path, **extra: str) -> WasmedgeRunner:
    path = PYTHON_BIN + os.pathsep + os.environ.get("PATH", os.defpath)
    return WasmedgeRunner(
        str(FAKE), process_env={"PATH": path, "FAKE_WASMEDGE_ARGV_LOG": str(argv_log), **extra}
    )


@pytest.fixture
def runner(argv_log: Path) -> WasmedgeRunner:
    return fake_runner(argv_log)


def calls(argv_log: Path) -> list[dict[str, list[str]]]:
    if not argv_log.exists():
        return []
    return [json.loads(line) for line in argv_log.read_text().splitlines()]


def request(
    tmp_path: Path,
    wasm: str | bytes,
    *,
    args: tuple[str, ...] = (),
    env: tuple[tuple[str, str], ...] = (),
    timeout_s: float = 20.0,
    memory_mb: int = 64,
    fuel: int | None = None,
    stdin: bytes | None = None,
) -> RunRequest:
    wasm_path = tmp_path / "module.wasm"
    wasm_path.write_bytes(module(wasm) if isinstance(wasm, str) else wasm)
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    stdin_path = None
    if stdin is not None:
        stdin_path = tmp_path / "stdin"
        stdin_path.write_bytes(stdin)
    return RunRequest(
        wasm_path=wasm_path, sha256="0" * 64, args=args, env=env, timeout_s=timeout_s,
        memory_mb=memory_mb, fuel=fuel, out_dir=out_dir, stdin_path=stdin_path,
    )


def run(
    runner: WasmedgeRunner,
    req: RunRequest,
    *,
    on_stdout: Callable[[bytes], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> Run:
    out: list[bytes] = []
    err: list[bytes] = []
    threads: set[str] = set()
    started: list[int] = []

    def stdout(chunk: bytes) -> None:
        assert isinstance(chunk, bytes)
        threads.add(threading.current_thread().name)
        out.append(chunk)
        if on_stdout is not None:
            on_stdout(chunk)

    def stderr(chunk: bytes) -> None:
        assert isinstance(chunk, bytes)
        err.append(chunk)

    def start() -> None:
        started.append(1)
        if on_start is not None:
            on_start()

    result = runner.run(req, stdout=stdout, stderr=stderr, on_start=start)
    return Run(result, b"".join(out), b"".join(err), len(started), threads)


# --- output, exit codes, arguments, environment, files ---------------------------------


def test_stdin_is_transformed_to_stdout(
    runner: WasmedgeRunner, tmp_path: Path, argv_log: Path
) -> None:
    seen_before_spawn: list[bool] = []
    r = run(runner, request(tmp_path, "upper", stdin=b"hello\nwasm edge\nlast"),
            on_start=lambda: seen_before_spawn.append(argv_log.exists()))
    assert r.result == RunResult("succeeded", 0, None)
    assert r.out == "HELLO\nWASM EDGE\nLAST\n"
    assert "upper: processed 3 lines" in r.err
    assert r.started == 1
    assert seen_before_spawn == [False]  # on_start came before the process existed
    assert threading.current_thread().name not in r.threads  # pumped by reader threads


def test_no_stdin_reads_as_empty(runner: WasmedgeRunner, tmp_path: Path) -> None:
    r = run(runner, request(tmp_path, "upper"))
    assert r.result.state == "succeeded"
    assert r.out == ""
    assert "processed 0 lines" in r.err


def test_nonzero_exit_code_fails_with_it(runner: WasmedgeRunner, tmp_path: Path) -> None:
    r = run(runner, request(tmp_path, "exitcode", args=("7",)))
    assert r.result == RunResult("failed", 7, "the module exited with code 7")
    assert "exiting with 7" in r.err


def test_args_and_env_reach_the_module_and_the_host_env_does_not(
    runner: WasmedgeRunner, tmp_path: Path, argv_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOLD_HOST_SECRET", "do-not-leak")
    r = run(runner, request(tmp_path, "echoenv", args=("a b", "--env", "x=y"),
                            env=(("GREETING", "hi there"), ("EMPTY", ""))))
    assert r.result.state == "succeeded"
    assert r.out.splitlines() == [
        "arg: a b", "arg: --env", "arg: x=y",
        "env: GREETING=hi there", "env: EMPTY=",
        "host: hidden",
    ]
    [call] = calls(argv_log)
    assert "POOLD_HOST_SECRET" not in call["environ"]
    # the wasmedge process gets PATH and what process_env adds, nothing of the agent's own
    assert set(call["environ"]) <= {"PATH", "FAKE_WASMEDGE_ARGV_LOG", "LC_CTYPE"}


def test_out_files_appear_in_the_host_out_dir(runner: WasmedgeRunner, tmp_path: Path) -> None:
    req = request(tmp_path, "artifacts", args=("x", "y"))
    r = run(runner, req)
    assert r.result.state == "succeeded", r.err
    assert r.out == "wrote artifacts\n"
    assert (req.out_dir / "hello.txt").read_text() == "hello from wasm\n"
    assert (req.out_dir / "sub" / "args.txt").read_text() == "x y\n"


def test_exact_command_line(runner: WasmedgeRunner, tmp_path: Path, argv_log: Path) -> None:
    req = request(tmp_path, "artifacts", args=("one", "two"), env=(("A", "1"),),
                  timeout_s=5, memory_mb=32)
    assert run(runner, req).result.state == "succeeded"
    [call] = calls(argv_log)
    assert call["argv"] == [
        "--force-interpreter",
        "--dir", f"/out:{req.out_dir}",
        "--env", "A=1",
        "--time-limit", "5000",
        "--memory-page-limit", "512",
        "--", str(req.wasm_path), "one", "two",
    ]
    options = [a for a in call["argv"] if a.startswith("--")]
    assert not any("aot" in a or "jit" in a or "statistics" in a for a in options)


def test_fuel_becomes_gas_limit(runner: WasmedgeRunner, tmp_path: Path, argv_log: Path) -> None:
    req = request(tmp_path, "exitcode", args=("0",), timeout_s=2.5, memory_mb=1,
                  fuel=10_000_000)
    assert run(runner, req).result.state == "succeeded"
    argv = calls(argv_log)[0]["argv"]
    assert argv[argv.index("--time-limit") + 1] == "2500"
    assert argv[argv.index("--memory-page-limit") + 1] == "16"
    assert argv[argv.index("--gas-limit") + 1] == "10000000"


def test_aot_section_of_an_upload_is_never_run(runner: WasmedgeRunner, tmp_path: Path) -> None:
    """The stand-in refuses a module with a WasmEdge AOT section unless the
    driver forces the interpreter, as the real CLI would run its native code."""
    universal = with_custom_section(module("noop"), "wasmedge", b"\x7fELF native code")
    r = run(runner, request(tmp_path, universal))
    assert r.result == RunResult("succeeded", 0, None), r.err


# --- limits and interrupts ---------------------------------------------------------------


def test_time_limit_times_out(runner: WasmedgeRunner, tmp_path: Path) -> None:
    r = run(runner, request(tmp_path, "spin", timeout_s=0.5))
    assert r.result == RunResult(
        "timed_out", None, "the module ran longer than its time limit of 0.5 s"
    )
    assert "execution interrupted" in r.err  # WasmEdge's own limit, not the watchdog


def test_watchdog_kills_a_runtime_that_overstays(tmp_path: Path, argv_log: Path) -> None:
    runner = fake_runner(argv_log, FAKE_WASMEDGE_IGNORE_TIME_LIMIT="1")
    begun = time.monotonic()
    r = run(runner, request(tmp_path, "spin", timeout_s=0.2))
    assert r.result == RunResult(
        "timed_out", None, "the module ran longer than its time limit of 0.2 s"
    )
    assert time.monotonic() - begun >= 1.2


def test_memory_limit_grow_fails(runner: WasmedgeRunner, tmp_path: Path) -> None:
    r = run(runner, request(tmp_path, "growmem", memory_mb=1))
    assert r.result.state == "failed"
    assert r.result.exit_code is None
    assert r.result.error is not None
    assert r.result.error.startswith("the module trapped: unreachable")
    assert "memory limit of 1 MiB" in r.result.error


def test_memory_limit_malloc_fails(runner: WasmedgeRunner, tmp_path: Path) -> None:
    r = run(runner, request(tmp_path, "hog", memory_mb=8))
    assert r.result.state == "failed"
    assert r.result.exit_code == 1
    assert r.result.error is not None
    assert r.result.error.startswith("the module exited with code 1")
    assert "memory limit of 8 MiB" in r.result.error
    assert "hog: allocation failed" in r.err


def test_fuel_exhaustion_fails(runner: WasmedgeRunner, tmp_path: Path) -> None:
    r = run(runner, request(tmp_path, "spin", fuel=100_000))
    assert r.result == RunResult("failed", None, "the module ran out of fuel (limit 100000)")
    assert "cost limit exceeded" in r.err


def test_fuel_wasmedge_cannot_take_is_refused(
    runner: WasmedgeRunner, tmp_path: Path, argv_log: Path
) -> None:
    r = run(runner, request(tmp_path, "noop", fuel=2**31))
    assert r.result.state == "error"
    assert r.result.error is not None
    assert "2147483647" in r.result.error
    assert r.started == 0
    assert calls(argv_log) == []


def test_cancel_from_another_thread(runner: WasmedgeRunner, tmp_path: Path) -> None:
    ticking = threading.Event()
    results: list[Run] = []
    worker = threading.Thread(target=lambda: results.append(
        run(runner, request(tmp_path, "ticker"), on_stdout=lambda _: ticking.set())))
    worker.start()
    assert ticking.wait(20), "the module never printed"
    runner.interrupt("cancel")
    worker.join(20)
    assert not worker.is_alive()
    [r] = results
    assert r.result == RunResult("cancelled", None, "the job was cancelled while running")
    assert r.out.startswith("tick 1\n")


def test_interrupt_timeout_times_out(runner: WasmedgeRunner, tmp_path: Path) -> None:
    r = run(runner, request(tmp_path, "ticker"),
            on_stdout=lambda _: runner.interrupt("timeout"))
    assert r.result.state == "timed_out"


def test_cancel_before_start_spawns_nothing(
    runner: WasmedgeRunner, tmp_path: Path, argv_log: Path
) -> None:
    runner.interrupt("cancel")
    r = run(runner, request(tmp_path, "noop"))
    assert r.result.state == "cancelled"
    assert r.started == 0
    assert calls(argv_log) == []
    # the interrupt belonged to that job only
    assert run(runner, request(tmp_path, "noop")).result.state == "succeeded"


def test_runtime_log_lines_on_stdout_are_not_module_output(
    tmp_path: Path, argv_log: Path
) -> None:
    """spdlog, which WasmEdge logs with, writes to stdout by default."""
    runner = fake_runner(argv_log, FAKE_WASMEDGE_LOG_STREAM="stdout")
    # fuel runs out after a few ticks (about 4,300 a tick), whatever the machine's speed
    r = run(runner, request(tmp_path, "ticker", fuel=20_000))
    assert r.result == RunResult("failed", None, "the module ran out of fuel (limit 20000)")
    assert r.out.startswith("tick 1\n")
    assert all(line.startswith("tick ") for line in r.out.splitlines()), r.out
    assert "[error] execution failed: cost limit exceeded" in r.err

    r = run(runner, request(tmp_path, "hog", memory_mb=4))
    assert r.out == ""
    assert r.result.error is not None
    assert "memory limit of 4 MiB" in r.result.error
    assert "Memory grow page failed" in r.err


# --- errors ----------------------------------------------------------------------------


def test_missing_binary_is_an_error(tmp_path: Path) -> None:
    for runner in (WasmedgeRunner(str(tmp_path / "no-such-wasmedge")),
                   WasmedgeRunner("wasmedge", process_env={"PATH": str(tmp_path)})):
        r = run(runner, request(tmp_path, "noop"))
        assert r.result == RunResult("error", None, NOT_INSTALLED)
        assert r.started == 0
        runner.warm_up()  # does not raise either


def test_warm_up_asks_for_the_version(runner: WasmedgeRunner, argv_log: Path) -> None:
    runner.warm_up()
    assert [call["argv"] for call in calls(argv_log)] == [["--version"]]


def test_invalid_module_is_an_error(runner: WasmedgeRunner, tmp_path: Path) -> None:
    r = run(runner, request(tmp_path, truncated(module("upper"))))
    assert r.result.state == "error"
    assert r.result.error is not None
    assert r.result.error.startswith("the module could not be compiled: ")


def test_module_without_start_is_an_error(runner: WasmedgeRunner, tmp_path: Path) -> None:
    reactor = bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1))'))
    r = run(runner, request(tmp_path, reactor))
    assert r.result == RunResult("error", None, NO_START)


def test_unreadable_stdin_is_an_error(runner: WasmedgeRunner, tmp_path: Path) -> None:
    req = request(tmp_path, "upper", stdin=b"")
    assert req.stdin_path is not None
    req.stdin_path.unlink()
    r = run(runner, req)
    assert r.result.state == "error"
    assert r.started == 0


def test_option_like_env_name_is_refused(runner: WasmedgeRunner, tmp_path: Path) -> None:
    r = run(runner, request(tmp_path, "noop", env=(("--dir", "/"),)))
    assert r.result.state == "error"
    assert r.started == 0


# --- pieces ----------------------------------------------------------------------------


def test_runtime_log_split_keeps_module_bytes_intact() -> None:
    log = _RuntimeLog()
    line = b"[2025-01-02 03:04:05.678] [error] execution failed: unreachable, Code: 0x89\n"
    parts = [b"one\npart", b"ial", line[:20], line[20:] + b"rest\n[not a log] line\n", b"end"]
    module, runtime = b"", b""
    for part in parts:
        m, r = log.feed(part)
        module, runtime = module + m, runtime + r
    m, r = log.finish()
    assert module + m == b"one\npartialrest\n[not a log] line\nend"
    assert runtime + r == line
    assert list(log.lines) == ["execution failed: unreachable, Code: 0x89"]


@pytest.mark.parametrize(
    ("code", "reason", "lines", "elapsed", "expected"),
    [
        (134, None, [], 5.0, RunResult(
            "timed_out", None, "the module ran longer than its time limit of 2 s")),
        (134, None, [], 0.1, RunResult("failed", 134, "the module exited with code 134")),
        (134, None, ["execution failed: integer divide by zero, Code: 0x84"], 0.1,
         RunResult("failed", None, "the module trapped: integer divide by zero")),
        (-9, None, [], 0.1,
         RunResult("failed", None, "the wasmedge runtime was killed by SIGKILL")),
        (-9, "cancel", [], 0.1, RunResult(
            "cancelled", None, "the job was cancelled while running")),
        (0, "cancel", [], 0.1, RunResult("succeeded", 0, None)),
        (1, None, ["instantiation failed: unknown import, Code: 0x62"], 0.1,
         RunResult("failed", None, "the module could not start: unknown import")),
        (200, None, [], 0.1, RunResult("failed", 200, "the module exited with code 200")),
    ],
)
def test_outcome_mapping(
    tmp_path: Path, code: int, reason: InterruptReason | None, lines: list[str], elapsed: float,
    expected: RunResult,
) -> None:
    req = request(tmp_path, "noop", timeout_s=2)
    assert outcome(req, code, reason, lines, elapsed) == expected


# --- choosing the driver -------------------------------------------------------------


def test_make_runner_picks_wasmedge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def settings(engine: str) -> AgentSettings:
        return AgentSettings(slot=tmp_path, kafka="localhost:9092", cache=tmp_path, engine=engine)

    chosen = make_runner(settings("wasmedge"), {"POOLD_AGENT_WASMEDGE": "/opt/we/bin/wasmedge"})
    assert isinstance(chosen, WasmedgeRunner)
    assert chosen.binary == "/opt/we/bin/wasmedge"
    chosen = make_runner(settings("wasmedge"), {})
    assert isinstance(chosen, WasmedgeRunner)
    assert chosen.binary == "wasmedge"
    monkeypatch.setenv("POOLD_AGENT_WASMEDGE", "/from/the/environment")
    chosen = make_runner(settings("wasmedge"))
    assert isinstance(chosen, WasmedgeRunner)
    assert chosen.binary == "/from/the/environment"
    assert isinstance(make_runner(settings("wasmtime")), WasmtimeRunner)
    with pytest.raises(AgentConfigError, match="wasmedge"):
        make_runner(settings("wamr"))
