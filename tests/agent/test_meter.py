"""The agent's meter around each runtime driver: what it measures, and what it
leaves null because the runtime cannot see it (``docs/metrics.md``)."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from pathlib import Path

import pytest
import yaml

from poold.agent import usage as usage_module
from poold.agent.settings import AgentConfigError, AgentSettings
from poold.agent.usage import Meter
from poold.runtime.engine import CompileCache
from poold.runtime.runner import Runner, RunRequest
from poold.runtime.wasmedge_runner import WasmedgeRunner
from poold.runtime.wasmtime_runner import WasmtimeRunner
from tests.support.wasm_fixtures import module

FAKE = Path(__file__).resolve().parents[1] / "fixtures" / "fake_wasmedge.py"
MIB = 2**20


def _request(tmp_path: Path, name: str, *, fuel: int | None = None) -> RunRequest:
    wasm = tmp_path / "module.wasm"
    wasm.write_bytes(module(name))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return RunRequest(
        wasm_path=wasm, sha256="0" * 64, args=(), env=(), timeout_s=30, memory_mb=256,
        fuel=fuel, out_dir=out, stdin_path=None,
    )


def _measure(runner: Runner, request: RunRequest) -> Meter:
    """Run on a thread of its own, as the agent does."""
    meter = Meter()

    def work() -> None:
        try:
            runner.run(request, stdout=meter.counting(lambda _: None, stream="stdout"),
                       stderr=meter.counting(lambda _: None, stream="stderr"),
                       on_start=meter.begin)
        finally:
            meter.end()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    return meter


def test_wasmtime_reports_every_figure(tmp_path: Path) -> None:
    runner = WasmtimeRunner(CompileCache(tmp_path / "cache"))
    request = _request(tmp_path, "touch64", fuel=10**9)
    meter = _measure(runner, request)
    usage = meter.usage(runner=runner, stdout_records=0, out_dir=request.out_dir)
    assert usage is not None
    assert usage.memory_peak_bytes == 64 * MIB + 64 * 1024
    assert usage.rss_peak_bytes is not None and usage.rss_peak_bytes >= 64 * MIB
    assert usage.fuel_consumed is not None and usage.fuel_consumed > 1024 * 16
    assert usage.cpu_ms is not None and usage.cpu_ms > 0


def test_wasmedge_reports_its_process_cpu_and_rss_and_leaves_wasm_figures_null(
    tmp_path: Path,
) -> None:
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    runner = WasmedgeRunner(str(FAKE), process_env={"PATH": path})
    request = _request(tmp_path, "touch64", fuel=10**9)
    meter = _measure(runner, request)
    usage = meter.usage(runner=runner, stdout_records=0, out_dir=request.out_dir)
    assert usage is not None
    # the runtime process: the stand-in is a Python interpreter, so well above zero
    assert usage.cpu_ms is not None and usage.cpu_ms > 10
    assert usage.rss_peak_bytes is not None and usage.rss_peak_bytes >= 64 * MIB
    assert usage.memory_peak_bytes is None
    assert usage.fuel_consumed is None


def test_nothing_is_measured_when_the_module_never_started(tmp_path: Path) -> None:
    runner = WasmtimeRunner(CompileCache(tmp_path / "cache"))
    runner.interrupt("cancel")
    request = _request(tmp_path, "noop")
    meter = Meter()
    meter.end()
    assert meter.usage(runner=runner, stdout_records=0, out_dir=request.out_dir) is None


def test_runner_pods_read_the_container_cgroup_and_a_bad_source_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    template = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "deploy" / "runner" / "pod-template.yaml")
        .read_text())
    (container,) = [c for c in template["spec"]["containers"] if c["name"] == "agent"]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    # poold adds the worker's own secret to each pod's spec (podtemplate.TOKEN_ENV)
    env |= {"POOLD_AGENT_KAFKA": "k:9092", "POOLD_AGENT_TOKEN": "a-per-pod-secret"}
    assert AgentSettings.from_env(env).rss_source == "cgroup"
    with pytest.raises(AgentConfigError, match="POOLD_AGENT_RSS"):
        AgentSettings.from_env(env | {"POOLD_AGENT_RSS": "cgroups"})

    peak = tmp_path / "memory.peak"
    peak.write_text("123456789\n")
    monkeypatch.setattr(usage_module, "CGROUP_PEAK", peak)
    runner = WasmtimeRunner(CompileCache(tmp_path / "cache"))
    request = _request(tmp_path, "noop")
    meter = Meter(rss_source="cgroup")
    meter.begin()
    meter.end()
    measured = meter.usage(runner=runner, stdout_records=0, out_dir=request.out_dir)
    assert measured is not None and measured.rss_peak_bytes == 123456789


def test_a_reused_runner_never_reports_an_earlier_run(tmp_path: Path) -> None:
    runner = WasmtimeRunner(CompileCache(tmp_path / "cache"))
    first = _request(tmp_path, "touch64")
    _measure(runner, first)
    assert runner.runtime_usage().memory_peak_bytes == 64 * MIB + 64 * 1024
    broken = tmp_path / "broken"
    broken.mkdir()
    bad = dataclasses.replace(_request(broken, "noop"), sha256="1" * 64)
    bad.wasm_path.write_bytes(b"\0asm\1\0\0\0\1")  # cut short: it does not compile
    _measure(runner, bad)
    assert runner.runtime_usage().memory_peak_bytes is None
