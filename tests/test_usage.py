"""What each job cost: the ``usage`` object of a terminal job record, checked
against real modules and against the operating system's own accounting."""

from __future__ import annotations

import os
import signal

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from poold.daemon import Daemon
from poold.protocol import Usage
from poold.sched.pool import WorkerState
from poold.slots import Slot
from poold.types import JobId, PodName
from tests.support.daemon import Client, DaemonFactory, until_running, wait_done
from tests.support.wasm_fixtures import module

MIB = 2**20
USAGE_FIELDS = set(Usage.names())


def _process_cpu_ms(pid: int) -> float:
    """utime + stime of a process as the kernel counts it (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


async def _idle_worker(daemon: Daemon) -> tuple[PodName, int]:
    pool = daemon.pool
    assert pool is not None
    await pool.wait_until(lambda: pool.count(WorkerState.IDLE) == 1, 30)
    (pod,) = [w.pod for w in pool.workers.values() if w.state is WorkerState.IDLE]
    pid = daemon.backend.pid_of(pod)  # type: ignore[union-attr]
    assert pid is not None
    return pod, pid


@pytest.mark.timeout(120)
async def test_cpu_of_a_burner_matches_the_worker_process_own_cpu_time(
    start_daemon: DaemonFactory, session: aiohttp.ClientSession,
) -> None:
    daemon = await start_daemon(pool__min_idle=1)
    alpha = Client(daemon, session, "alpha")
    sha = await alpha.upload(module("cpuburn"))
    pod, pid = await _idle_worker(daemon)
    before = _process_cpu_ms(pid)
    job = await alpha.submit(sha, limits={"timeout_s": 60})
    async with alpha.request("GET", f"/v1/jobs/{job['id']}/output",
                             params={"follow": "true"}) as r:
        assert r.status == 200
        line = await r.content.readline()
        assert line == b"burned\n"
        # the module now waits (sleeping) for /out/go: its worker is still alive
        after = _process_cpu_ms(pid)
        running = daemon.store.get(JobId(job["id"]))
        assert running is not None and running.pod == pod, "another worker took the job"
        (Slot.of(daemon.settings.slots.root, pod).artifacts / "go").touch()
        assert await r.content.read() == b""
    await wait_done(daemon, job["id"])
    record = await alpha.json("GET", f"/v1/jobs/{job['id']}", 200)
    assert record["state"] == "succeeded", record
    cpu_ms = record["usage"]["cpu_ms"]
    worker_ms = after - before
    assert worker_ms >= 100, f"the burner used only {worker_ms} ms of its worker's CPU"
    assert 0.7 * worker_ms <= cpu_ms <= 1.3 * worker_ms, (cpu_ms, worker_ms)


async def test_a_64_mib_toucher_reports_its_linear_and_resident_memory(alpha: Client) -> None:
    noop = await alpha.run(module("noop"))
    touched = await alpha.run(module("touch64"))
    assert noop["state"] == touched["state"] == "succeeded", (noop, touched)
    assert noop["usage"]["memory_peak_bytes"] == 64 * 1024  # its one page
    assert touched["usage"]["memory_peak_bytes"] == 64 * MIB + 64 * 1024
    assert touched["usage"]["rss_peak_bytes"] >= 64 * MIB
    # the worker's own resident memory is in both; the toucher's 64 MiB on top
    grew = touched["usage"]["rss_peak_bytes"] - noop["usage"]["rss_peak_bytes"]
    assert grew >= 56 * MIB, (noop["usage"], touched["usage"])


async def test_a_clock_sleeper_spends_far_less_cpu_than_its_run_time(alpha: Client) -> None:
    job = await alpha.run(module("sleeper"))
    assert job["state"] == "succeeded", job
    assert job["run_ms"] >= 300
    assert job["usage"]["cpu_ms"] is not None
    assert job["usage"]["cpu_ms"] < job["run_ms"] / 4, job


async def test_fuel_grows_with_the_work_and_is_null_without_a_fuel_limit(alpha: Client) -> None:
    fuel = 10**10
    little = await alpha.run(module("upper"), input=["x"] * 10, limits={"fuel": fuel})
    more = await alpha.run(module("upper"), input=["x"] * 1000, limits={"fuel": fuel})
    unmetered = await alpha.run(module("upper"), input=["x"] * 10)
    for job in (little, more, unmetered):
        assert job["state"] == "succeeded", job
    assert 0 < little["usage"]["fuel_consumed"] < more["usage"]["fuel_consumed"] < fuel
    assert unmetered["usage"]["fuel_consumed"] is None


async def test_stdio_and_artifact_figures(alpha: Client) -> None:
    upper = await alpha.run(module("upper"), input=["hello", "wide world"])
    usage = upper["usage"]
    assert usage["stdin_records"] == 2
    assert usage["stdin_bytes"] == len(b"hello\nwide world\n")
    assert usage["stdout_records"] == 2
    assert usage["stdout_bytes"] == len(b"HELLO\nWIDE WORLD\n")
    assert usage["stderr_bytes"] == len(b"upper: processed 2 lines\n")
    assert usage["artifacts_bytes"] == 0

    files = await alpha.run(module("artifacts"), args=["a", "bc"])
    assert files["usage"]["artifacts_bytes"] == len(b"hello from wasm\n") + len(b"a bc\n")
    assert files["usage"]["stdin_records"] == 0
    assert files["usage"]["stdout_records"] == 1
    assert sum(a["size"] for a in files["artifacts"]) == files["usage"]["artifacts_bytes"]


async def test_a_timed_out_job_reports_what_was_measured(alpha: Client) -> None:
    job = await alpha.run(module("spin"), limits={"timeout_s": 0.5})
    assert job["state"] == "timed_out", job
    usage = job["usage"]
    assert 0 < usage["cpu_ms"] <= job["run_ms"] * 1.1  # it spun until it was stopped
    assert usage["memory_peak_bytes"] == 64 * 1024
    assert usage["rss_peak_bytes"] > 0
    assert usage["stdout_records"] == 0


async def test_usage_is_null_while_running_and_all_null_when_nothing_ran(
    start_daemon: DaemonFactory, session: aiohttp.ClientSession,
) -> None:
    daemon = await start_daemon(tenants__alpha__max_concurrent_jobs=1)
    alpha = Client(daemon, session, "alpha")
    spin = await alpha.upload(module("spin"))
    running = await alpha.submit(spin, limits={"timeout_s": 30})
    queued = await alpha.submit(spin)
    await until_running(daemon, running["id"])
    assert queued["usage"] is None
    cancelled = await alpha.json("DELETE", f"/v1/jobs/{queued['id']}", 200)
    assert cancelled["state"] == "cancelled"
    assert cancelled["usage"] == dict.fromkeys(USAGE_FIELDS), cancelled["usage"]
    await alpha.json("DELETE", f"/v1/jobs/{running['id']}", 200)
    await wait_done(daemon, running["id"])
    ended = await alpha.json("GET", f"/v1/jobs/{running['id']}", 200)
    assert ended["state"] == "cancelled"
    assert ended["usage"]["cpu_ms"] > 0  # cancelled while running: measured up to then


async def test_usage_reaches_prometheus(alpha: Client, daemon: Daemon) -> None:
    await alpha.run(module("upper"), input=["abc", "de"], limits={"fuel": 10**9})
    text = await alpha.text("/metrics")

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    alpha_ok = {"tenant": "alpha", "state": "succeeded"}
    assert value("poold_job_cpu_seconds_count", **alpha_ok) == 1
    assert value("poold_job_cpu_seconds_sum", **alpha_ok) > 0
    assert value("poold_job_memory_peak_bytes_count", tenant="alpha") == 1
    assert value("poold_job_rss_peak_bytes_count", tenant="alpha") == 1
    assert value("poold_job_fuel_consumed_total", tenant="alpha") > 0
    assert value("poold_job_records_total", tenant="alpha", direction="in") == 2
    assert value("poold_job_records_total", tenant="alpha", direction="out") == 2
    assert value("poold_job_bytes_total", tenant="alpha", stream="stdin") == 7
    assert value("poold_job_bytes_total", tenant="alpha", stream="stdout") == 7
    assert not [k for k in samples if k[0].startswith("poold_job_") and ("tenant", "beta") in k[1]]


async def test_a_job_whose_worker_died_has_every_figure_null_not_zero(
    daemon: Daemon, alpha: Client,
) -> None:
    job = await alpha.submit(await alpha.upload(module("spin")), limits={"timeout_s": 60})
    record = await until_running(daemon, job["id"])
    assert record.pod is not None
    pid = daemon.backend.pid_of(record.pod)  # type: ignore[union-attr]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await wait_done(daemon, job["id"])
    ended = await alpha.json("GET", f"/v1/jobs/{job['id']}", 200)
    assert ended["state"] == "error", ended
    assert ended["usage"] == dict.fromkeys(USAGE_FIELDS)


async def test_a_job_stopped_at_its_memory_cap_reports_its_peak(alpha: Client) -> None:
    job = await alpha.run(module("growmem"), limits={"memory_mb": 16})
    assert job["state"] == "failed", job
    peak = job["usage"]["memory_peak_bytes"]
    assert 8 * MIB < peak <= 16 * MIB, job["usage"]
    assert job["usage"]["cpu_ms"] is not None


async def test_a_hot_job_reports_its_own_usage_not_the_last_jobs(
    start_daemon: DaemonFactory, session: aiohttp.ClientSession,
) -> None:
    daemon = await start_daemon(pool__reuse="tenant", pool__hot_idle_ttl_s=0)
    alpha = Client(daemon, session, "alpha")
    big = await alpha.run(module("touch64"), args=["x"])
    pool = daemon.pool
    assert pool is not None
    await pool.wait_until(lambda: pool.figures()["hot"] == 1, 30)
    # waiting hot, the worker no longer holds the last job's memory
    pid = daemon.backend.pid_of(PodName(big["pod"]))  # type: ignore[union-attr]
    assert pid is not None
    with open(f"/proc/{pid}/status") as f:
        idle_rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert idle_rss <= big["usage"]["rss_peak_bytes"] - 48 * MIB, (idle_rss, big["usage"])
    small = await alpha.run(module("noop"))
    assert small["pod"] == big["pod"] and small["start"] == "hot", (big, small)
    assert small["usage"]["memory_peak_bytes"] == 64 * 1024
    assert small["usage"]["stdout_bytes"] == 0 and small["usage"]["artifacts_bytes"] == 0
    # the last job's 64 MiB were let go before this job's peak was taken
    freed = big["usage"]["rss_peak_bytes"] - small["usage"]["rss_peak_bytes"]
    assert freed >= 48 * MIB, (big["usage"], small["usage"])
