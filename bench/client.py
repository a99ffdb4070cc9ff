"""The bench's HTTP client: poold's public API, nothing else.

One job's life as the bench sees it: ``POST /v1/jobs`` (the clock starts
just before the request is sent), ``GET /v1/jobs/{id}/output?follow=true``
(it answers when the job ends; no polling), then ``GET /v1/jobs/{id}`` for
the record (the clock stops when a terminal record is in hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

TERMINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled", "error"})
FOLLOW_ATTEMPTS = 3
"""Follows per job before the bench gives up on seeing it end."""
CANCEL_WAIT_S = 5.0


class ApiError(Exception):
    pass


def parse_ts(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value)


def ms_between(start: Any, end: Any) -> float | None:
    a, b = parse_ts(start), parse_ts(end)
    if a is None or b is None:
        return None
    return round((b - a).total_seconds() * 1000, 3)


@dataclass
class Outcome:
    """What the client saw of one job."""

    job_id: str | None
    record: dict[str, Any] | None
    output: list[str] | None
    sent: float
    """perf_counter() just before POST /v1/jobs."""
    accepted: float | None
    """perf_counter() when the 202 arrived."""
    done: float | None
    """perf_counter() when the terminal record arrived."""
    problem: str | None = None
    """Why the client could not see the job end (then ``record`` may be partial)."""
    follow_breaks: int = 0
    """Follow streams poold cut off before their end (the record is read regardless)."""
    timed_out: bool = False
    """The job was not seen ending within the deadline (and was cancelled)."""


_COUNTERS = re.compile(r'^(poold_pool_worker_creations_total|'
                       r'poold_pool_worker_retirements_total\{reason="surplus"\}) (\S+)$',
                       re.MULTILINE)


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}

    async def _json(self, method: str, path: str, want: tuple[int, ...], **kw: Any) -> Any:
        headers = {**self.headers, **kw.pop("headers", {})}
        async with self.session.request(method, self.base + path, headers=headers, **kw) as r:
            if r.status not in want:
                raise ApiError(f"{method} {path}: {r.status} {(await r.text())[:300]}")
            return await r.json()

    async def upload(self, wasm: bytes) -> str:
        body = await self._json("PUT", "/v1/modules", (200, 201), data=wasm,
                                headers={"Content-Type": "application/wasm"})
        return str(body["sha256"])

    async def pool(self) -> dict[str, Any]:
        figures: dict[str, Any] = await self._json("GET", "/v1/pool", (200,))
        return figures

    async def pool_counters(self) -> dict[str, float]:
        """Workers the pool created and surplus idle workers it retired so far
        (``/metrics``: poold_pool_worker_creations_total and
        poold_pool_worker_retirements_total{reason="surplus"})."""
        async with self.session.get(self.base + "/metrics") as r:
            if r.status != 200:
                raise ApiError(f"GET /metrics: {r.status}")
            text = await r.text()
        found = {m[1]: float(m[2]) for m in _COUNTERS.finditer(text)}
        return {"creations": found.get("poold_pool_worker_creations_total", 0.0),
                "surplus_retired": found.get(
                    'poold_pool_worker_retirements_total{reason="surplus"}', 0.0)}

    async def runtimes(self) -> list[dict[str, Any]]:
        body = await self._json("GET", "/v1/runtimes", (200,))
        return list(body["runtimes"])

    async def record(self, job_id: str) -> dict[str, Any]:
        record: dict[str, Any] = await self._json("GET", f"/v1/jobs/{job_id}", (200,))
        return record

    async def output(self, job_id: str, *, follow: bool) -> list[str] | None:
        """The job's output records. With ``follow``, returns when the job has ended.

        None when poold cut the (chunked) response off before its end: the caller
        then reads the record to see whether the job ended anyway.
        """
        path = f"/v1/jobs/{job_id}/output"
        async with self.session.get(self.base + path,
                                    params={"follow": "true" if follow else "false"},
                                    headers=self.headers) as r:
            if r.status != 200:
                raise ApiError(f"GET {path}: {r.status} {(await r.text())[:300]}")
            try:
                text = await r.text()
            except aiohttp.ClientPayloadError:
                return None
        return text.splitlines()

    async def cancel(self, job_id: str) -> None:
        """Best effort: DELETE a job the bench gave up on, so it stops using the pool."""
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT_S):
                async with self.session.delete(f"{self.base}/v1/jobs/{job_id}",
                                               headers=self.headers) as r:
                    await r.read()

    async def run(self, body: dict[str, Any], *, deadline_s: float,
                  check_output: bool = False) -> Outcome:
        """Submit one job and wait for its end; never raises for API or network trouble.

        A job not seen ending within ``deadline_s`` gets ``timed_out = True`` and
        is cancelled. ``check_output``: if the follow stream was cut off, read the
        output again (after the clock stopped) so that it can still be checked.
        """
        sent = time.perf_counter()
        outcome = Outcome(job_id=None, record=None, output=None, sent=sent, accepted=None,
                          done=None)
        try:
            async with asyncio.timeout(deadline_s):
                await self._until_end(outcome, body)
        except TimeoutError:
            outcome.timed_out = True
            outcome.problem = f"no end seen within job_deadline_s ({deadline_s:g} s)"
            if outcome.job_id is not None:
                await self.cancel(outcome.job_id)
        except (ApiError, aiohttp.ClientError, OSError, ValueError) as e:
            outcome.problem = f"{type(e).__name__}: {e}"
        if outcome.done is not None and outcome.output is None and check_output:
            # only to check the output; the clock has stopped
            with contextlib.suppress(ApiError, aiohttp.ClientError, OSError, TimeoutError):
                async with asyncio.timeout(CANCEL_WAIT_S):
                    outcome.output = await self.output(str(outcome.job_id), follow=False)
        return outcome

    async def _until_end(self, outcome: Outcome, body: dict[str, Any]) -> None:
        accepted = await self._json("POST", "/v1/jobs", (202,), json=body)
        outcome.accepted = time.perf_counter()
        outcome.job_id = str(accepted["id"])
        outcome.record = accepted
        for _ in range(FOLLOW_ATTEMPTS):
            outcome.output = await self.output(outcome.job_id, follow=True)
            if outcome.output is None:
                outcome.follow_breaks += 1
            outcome.record = await self.record(outcome.job_id)
            if outcome.record.get("state") in TERMINAL:
                outcome.done = time.perf_counter()
                return
        outcome.problem = (
            f"output?follow=true returned {FOLLOW_ATTEMPTS} times but the record still "
            f"says {outcome.record.get('state')!r}"
        )
