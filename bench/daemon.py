"""One ``poold serve`` subprocess per scenario, with a generated config.

The bench writes the whole configuration into a TOML file (own port, state
and slot dirs under a temp dir, embedded broker, one generated token per
tenant) and starts ``python -m poold serve`` with every ``POOLD_*`` variable
removed from its environment, so nothing from the caller's shell changes
what is measured. Stopping is SIGTERM, then a wait; SIGKILL to the process
group only if poold does not stop in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .scenario import Scenario

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.02
"""Pause between readiness probes at start-up (never used while measuring)."""


class DaemonError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def dump_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for nested tables of scalars and lists (enough for a config)."""
    lines: list[str] = []

    def table(prefix: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in body.items() if isinstance(v, dict)}
        if prefix and (scalars or not tables):
            lines.append(f"[{prefix}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in scalars.items())
        if scalars:
            lines.append("")
        for key, sub in tables.items():
            table(f"{prefix}.{key}" if prefix else key, sub)

    table("", data)
    return "\n".join(lines).rstrip() + "\n"


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Tenant:
    name: str
    token: str


@dataclass
class Poold:
    """A poold subprocess for one scenario. ``async with`` starts and stops it."""

    scenario: Scenario
    workdir: Path
    log_path: Path
    port: int = 0
    tenants: list[Tenant] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    killed: bool = False
    stop_s: float | None = None
    start_s: float | None = None
    leftover_slots: list[str] = field(default_factory=list)
    profile_path: Path | None = None
    """If set, poold runs under cProfile and writes its profile here when it stops
    (the poold process only: workers are forked processes of their own)."""
    _proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """poold's process id while it runs."""
        return None if self._proc is None else self._proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _generate(self) -> None:
        s = self.scenario
        self.port = free_port()
        self.tenants = [
            Tenant(f"bench{i + 1}", f"bench-{i + 1}-{secrets.token_urlsafe(24)}")
            for i in range(s.tenants)
        ]
        config: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": self.port},
            "pool": {
                "backend": "local",
                "min_idle": s.pool.min_idle,
                "max_pods": s.pool.max_pods,
                "max_starting": s.pool.max_starting,
            },
            # fsync as config/local.toml (the embedded default) has it: off on a local
            # disk; a scenario's `fsync = true` measures the durable setting
            "slots": {"root": str(self.workdir / "slots"), "fsync": s.fsync},
            "state": {"dir": str(self.workdir / "state"), "fsync": s.fsync},
            "kafka": {"bootstrap": "embedded", "embedded_port": 0, "partitions": s.partitions},
        }
        if s.pool.min_idle_floor is not None:
            config["pool"]["min_idle_floor"] = s.pool.min_idle_floor
        if s.pool.idle_ttl_s is not None:
            config["pool"]["idle_ttl_s"] = s.pool.idle_ttl_s
        config = _merge(config, s.poold)
        config["tenants"] = {
            t.name: {
                "token_sha256": hashlib.sha256(t.token.encode()).hexdigest(),
                "max_concurrent_jobs": s.max_concurrent_jobs,
                "max_queued_jobs": max(10_000, s.jobs + s.warmup_jobs),
            }
            for t in self.tenants
        }
        self.config = config

    def config_text(self) -> str:
        return dump_toml(self.config)

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._generate()
        path = self.workdir / "poold.toml"
        path.write_text(
            f"# generated by the poold bench for scenario {self.scenario.name}\n"
            + self.config_text(),
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("POOLD_")}
        began = time.monotonic()
        with self.log_path.open("wb") as log:
            profiler = ([] if self.profile_path is None
                        else ["-m", "cProfile", "-o", str(self.profile_path)])
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, *profiler, "-m", "poold", "serve", "--config", str(path),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                env=env, cwd=str(self.workdir), start_new_session=True,
            )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        self.start_s = time.monotonic() - began

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _check_alive(self) -> None:
        assert self._proc is not None
        if self._proc.returncode is not None:
            raise DaemonError(
                f"poold exited with code {self._proc.returncode} during start-up; "
                f"last lines of {self.log_path}:\n{self._log_tail()}"
            )

    async def _wait_ready(self) -> None:
        """Until /readyz answers 200 (polled: there is nothing to wait on)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                self._check_alive()
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise DaemonError(
                        f"poold was not ready within {READY_TIMEOUT_S:g} s; "
                        f"last lines of {self.log_path}:\n{self._log_tail()}"
                    )
                await asyncio.sleep(POLL_S)

    async def wait_pool_settled(self, session: aiohttp.ClientSession, token: str,
                                timeout_s: float = READY_TIMEOUT_S) -> dict[str, int]:
        """Until GET /v1/pool shows idle == its idle target (``min_idle``, or with
        ``"auto"`` the measured target: its floor at rest) with nothing busy, starting
        or being deleted: a warm pool at rest (polled: the API has no pool events)."""
        want: int | str = self.scenario.pool.min_idle
        deadline = time.monotonic() + timeout_s
        figures: dict[str, int] = {}
        while True:
            self._check_alive()
            async with session.get(f"{self.url}/v1/pool",
                                   headers={"Authorization": f"Bearer {token}"}) as r:
                if r.status != 200:
                    raise DaemonError(f"GET /v1/pool answered {r.status}: {await r.text()}")
                figures = await r.json()
            # hot workers (pool.reuse) wait for their tenant on top of min_idle
            generic = figures.get("idle", 0) - figures.get("hot", 0)
            want = figures.get("idle_target", want)
            if (generic == want and figures.get("busy", 0) == 0
                    and figures.get("starting", 0) == 0 and figures.get("deleting", 0) == 0):
                return figures
            if time.monotonic() > deadline:
                raise DaemonError(
                    f"the pool did not settle at idle == {want} within {timeout_s:g} s "
                    f"(last figures {figures}); last lines of {self.log_path}:\n"
                    f"{self._log_tail()}"
                )
            await asyncio.sleep(POLL_S)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        began = time.monotonic()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        else:
            await proc.wait()
        # poold's workers and broker live in its session; make sure none outlive it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, 0)
            self.killed = True
            os.killpg(proc.pid, signal.SIGKILL)
        self.exit_code = proc.returncode
        self.stop_s = time.monotonic() - began
        slots = self.workdir / "slots"
        if slots.is_dir():
            self.leftover_slots = sorted(p.name for p in slots.iterdir())

    def report(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "start_s": None if self.start_s is None else round(self.start_s, 3),
            "stop_s": None if self.stop_s is None else round(self.stop_s, 3),
            "exit_code": self.exit_code,
            "killed_leftovers": self.killed,
            "leftover_slots": self.leftover_slots,
            "tenants": [t.name for t in self.tenants],
        }

    async def __aenter__(self) -> Poold:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
