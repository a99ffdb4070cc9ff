"""A real Prometheus server scrapes poold's /metrics and sees what poold counted.

Needs Debian's ``prometheus`` package (``/usr/bin/prometheus``; ``.ci/run`` installs
it). The test runs its own Prometheus process with a generated configuration; the
package's systemd service is not used.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import aiohttp
import pytest

from poold.daemon import Daemon
from poold.data.embedded import free_port
from tests.support.daemon import Client
from tests.support.procs import stop
from tests.support.wasm_fixtures import module

PROMETHEUS = Path("/usr/bin/prometheus")
POLL_S = 0.2  # how often the test asks Prometheus; it scrapes every second
DEADLINE_S = 45  # for Prometheus to come up, scrape poold and answer both queries

T = TypeVar("T")


class _NotReadyError(Exception):
    """Prometheus answered 503: it is still starting up."""


@pytest.fixture
def prometheus_bin() -> Path:
    """Checked before poold starts: skip (or, under CI, fail) without the binary."""
    if PROMETHEUS.is_file() and os.access(PROMETHEUS, os.X_OK):
        return PROMETHEUS
    if os.environ.get("CI"):
        pytest.fail(f"{PROMETHEUS} is missing: .ci/run must install Debian's prometheus package")
    pytest.skip(f"{PROMETHEUS} is not installed (apt-get install prometheus); "
                "outside CI this test is skipped without it")


def _config(target: str) -> str:
    # JSON is YAML; only a scrape job, so no alertmanager, rules or remote write
    return (
        '{"global": {"scrape_interval": "1s", "scrape_timeout": "1s",'
        ' "evaluation_interval": "1s"},'
        ' "scrape_configs": [{"job_name": "poold", "metrics_path": "/metrics",'
        f' "static_configs": [{{"targets": ["{target}"]}}]}}]}}\n'
    )


async def _poll(what: str, probe: Callable[[], Awaitable[tuple[bool, T]]],
                proc: subprocess.Popen[bytes], log: Path, deadline: float) -> T:
    """Ask ``probe`` every POLL_S until it says done; fail at ``deadline`` or as soon
    as Prometheus exits. ``probe`` returns (done, what it saw)."""
    last: Any = None
    while True:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited with {proc.returncode} while waiting for "
                        f"{what}:\n{_tail(log)}")
        try:
            done, last = await probe()
        except (aiohttp.ClientError, TimeoutError, _NotReadyError) as e:  # still starting
            done, last = False, e
        if done:
            return cast(T, last)
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what} (last seen: {last!r}):\n{_tail(log)}")
        await asyncio.sleep(POLL_S)


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no prometheus log)"


@pytest.mark.timeout(90)
async def test_a_real_prometheus_scrapes_poold(
    prometheus_bin: Path, daemon: Daemon, alpha: Client, session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    job = await alpha.run(module("noop"))
    assert job["state"] == "succeeded", job
    job = await alpha.run(module("exitcode"), args=["3"])
    assert job["state"] == "failed", job

    target = urlsplit(daemon.url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(_config(target))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    log = tmp_path / "prometheus.log"
    pool = daemon.pool
    assert pool is not None

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(prometheus_bin), f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + DEADLINE_S
        request_timeout = aiohttp.ClientTimeout(total=5)

        async def api_get(path: str, **params: str) -> Any:
            async with session.get(api + path, params=params, timeout=request_timeout) as r:
                if r.status == 503:
                    raise _NotReadyError(await r.text())
                body = await r.json()
                assert r.status == 200, body
                assert body["status"] == "success", body
                return body["data"]

        async def target_up() -> tuple[bool, dict[str, Any] | None]:
            data = await api_get("/targets", state="active")
            for t in data["activeTargets"]:
                if t["labels"]["instance"] == target:
                    return t["health"] == "up", dict(t)
            return False, None

        async def query(expr: str) -> float | None:
            result = (await api_get("/query", query=expr))["result"]
            assert len(result) <= 1, result
            return float(result[0]["value"][1]) if result else None

        up = await _poll(f"the poold target {target} to be up", target_up, proc, log, deadline)
        assert up is not None and up["scrapeUrl"] == f"http://{target}/metrics", up

        for state in ("succeeded", "failed"):
            finished = f'poold_jobs_finished_total{{tenant="alpha",state="{state}"}}'

            async def one_finished(expr: str = finished) -> tuple[bool, float | None]:
                value = await query(expr)
                return value == 1, value

            assert await _poll(f"{finished} == 1", one_finished, proc, log, deadline) == 1

        # what the job cost: its CPU histogram and linear memory, per tenant
        for state in ("succeeded", "failed"):  # the noop, the exit-3 job
            cpu = f'poold_job_cpu_seconds_count{{tenant="alpha",state="{state}"}}'
            assert await query(cpu) == 1
            assert (await query(
                f'poold_job_cpu_seconds_sum{{tenant="alpha",state="{state}"}}') or 0) > 0
        assert await query('poold_job_memory_peak_bytes_count{tenant="alpha"}') == 2
        noop_sized = 'poold_job_memory_peak_bytes_bucket{tenant="alpha",le="65536.0"}'
        assert await query(noop_sized) == 1  # the noop's one page; exitcode (C) has more

        idle = 'poold_pool_workers{state="idle"}'

        async def idle_matches() -> tuple[bool, tuple[float | None, dict[str, int]]]:
            # compare with the pool as it is now, once it has settled (the worker
            # that ran the job may be replaced while Prometheus is starting)
            value = await query(idle)
            figures = pool.figures()
            settled = figures["starting"] == 0 and figures["busy"] == 0
            return settled and value == figures["idle"], (value, figures)

        seen, figures = await _poll(f"{idle} == the pool's idle count (Prometheus, pool)",
                                    idle_matches, proc, log, deadline)
        assert seen is not None and seen >= daemon.settings.pool.min_idle, figures
    finally:
        await asyncio.to_thread(stop, proc, 10)
