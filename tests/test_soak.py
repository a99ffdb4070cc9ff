"""Soak: 2,000 jobs from 10 tenants while workers are killed under their jobs.

Nothing accepted is lost (issue #5): every job that got a 202 reaches exactly
one terminal state, and accepted = succeeded + failed + timed_out + cancelled
+ error, both in the API (every tenant's job list, page by page) and in the
metrics; jobs whose worker was SIGKILLed end ``error`` naming the worker;
the other jobs end as their module says; outputs are right; the pool returns
to its target; no worker process outlives the daemon.

Strict: nothing is tolerated. Three bugs it once found are fixed and are now
plain failures: a DELETE that answered 200 ``"queued"`` and cancelled nothing
(it must be answered once, and the job must end cancelled); a killed job's
last lines leading the next output of its partition (every output checked must
be exactly the job's own, and a followed output must begin with the job's
first line); a worker's ``ready`` lost to a race and the worker replaced after
``pool.start_timeout_s`` (no worker may fail except those the soak killed).

Bounded: in-flight jobs are capped by a semaphore; every wait is on an event
(the store's change events, a followed output stream, the pool's own wait),
never a sleep. ``pytest -s`` prints a summary.

Ends by itself: a stall (no job ended for ``STALL_S``) fails the test at once
with what tells its causes apart (see :func:`_stall_report`); a run slower than
``SOAK_WITHIN_S`` (a busy machine) fails with how far it got; a followed output
that does not end with its job (cut off, or open ``END_WITHIN_S``) is reported
with the others' outcomes. Both are cancellations inside the
test's event loop, so nothing of the test goes on running while the daemon
stops. pytest-timeout's own limit is a last resort: it interrupts the loop
from outside and leaves the soak's tasks to run on during the teardown.

Seeded: the plan of jobs and the choice of workers to kill come from one seed,
printed when the test starts and attached to any failure. Replay a run with
``pytest tests/test_soak.py --seed N`` (timing still differs between runs).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from poold.daemon import Daemon
from poold.jobs.model import JobState
from poold.sched.pool import WorkerState
from poold.timestamps import utcnow
from tests.support.daemon import TOKENS, Client, DaemonFactory, wait_done
from tests.support.procs import children, parent, running
from tests.support.wasm_fixtures import module

JOBS = 2000
KILLS = JOBS // 20
"""About 5% of the workers (one per job) are SIGKILLed while their module runs."""
IN_FLIGHT = 64
"""Jobs submitted and not yet ended, at most: the queue stays short."""
END_WITHIN_S = 120
"""Every accepted job ends within this (the queue holds at most IN_FLIGHT jobs)."""
STALL_S = 90
"""Some job ends at least this often. Shorter than END_WITHIN_S: when the daemon
stalls, the stall is reported, not 64 jobs that each ran out of time. The quiet
machine ends ~13 jobs a second, one at load 10-19 (2 cores) ~4."""
SOAK_WITHIN_S = 1200
"""The whole soak, with its checks. 158 s on a busy machine; a run at load 10-19
had 1,651 of 2,000 jobs ended, steadily, when an earlier 400 s limit struck."""
MIN_IDLE = 8
MAX_PODS = 16
QUOTA = 8
TENANT_NAMES = ["alpha", "beta"] + [f"t{i}" for i in range(8)]
SOAK_TOKENS = {**TOKENS, **{f"t{i}": f"token-soak-t{i}-" + "s" * 20 for i in range(8)}}
TERMINAL = ("succeeded", "failed", "timed_out", "cancelled", "error")

# The kinds of job, their share of the jobs, and how each must end:
#   noop, upper    succeeded (upper: its output is its input uppercased)
#   exitcode N     failed with exit code N
#   spin           timed_out (limits.timeout_s = 0.2)
#   cancel_queued  a 10 s ticker DELETEd as soon as it is accepted: cancelled
#   cancel_run     a 10 s ticker DELETEd once its first line is read: cancelled
#   victim         a 3 s ticker; once it prints, the killer may SIGKILL its
#                  worker (error, naming the worker); if spared, succeeded
KINDS = {"noop": 0.45, "upper": 0.36, "exitcode": 0.05, "spin": 0.025,
         "cancel_queued": 0.02, "cancel_run": 0.025, "victim": 0.07}
MODULE_OF = {"noop": "noop", "upper": "upper", "exitcode": "exitcode", "spin": "spin",
             "cancel_queued": "ticker", "cancel_run": "ticker", "victim": "ticker"}
EXPECTED = {"noop": "succeeded", "upper": "succeeded", "exitcode": "failed",
            "spin": "timed_out", "cancel_queued": "cancelled", "cancel_run": "cancelled",
            "victim": "succeeded"}
VICTIM_TICKS = 60
KILL_WITHIN_S = 2.5
"""A victim runs at least 3 s (60 ticks, 50 ms apart); it is only killed in its
first 2.5 s, so it cannot have finished when its worker dies."""


def _settings() -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "kafka__partitions": 16,
        "pool__min_idle": MIN_IDLE,
        "pool__max_pods": MAX_PODS,
        "limits__default_timeout_s": 30,
        "state__fsync": "false",
    }
    for name in TENANT_NAMES:
        if name not in TOKENS:
            overrides[f"tenants__{name}__token_sha256"] = hashlib.sha256(
                SOAK_TOKENS[name].encode()).hexdigest()
        overrides[f"tenants__{name}__max_concurrent_jobs"] = QUOTA
    return overrides


class Tenant(Client):
    """:class:`Client` for any of the soak's tenants."""

    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession, name: str) -> None:
        super().__init__(daemon, session, "alpha")
        self.name = name
        self.headers = {"Authorization": f"Bearer {SOAK_TOKENS[name]}"}


@dataclass
class Planned:
    tenant: str
    kind: str
    body: dict[str, Any]
    input: list[str] = field(default_factory=list)
    status: int | None = None
    """The answer to the submission (202: accepted)."""
    id: str | None = None
    deletes: list[tuple[int, str]] = field(default_factory=list)
    """Each DELETE's status and the state it answered with."""
    first_line: bytes | None = None
    """What a followed output began with (cancel_run and victim jobs)."""
    final: dict[str, Any] | None = None
    stuck: str | None = None
    """Its record, if it had not ended ``END_WITHIN_S`` after it was submitted."""
    follow_cut: str | None = None
    """How its followed output failed to end (cut off, or still open ``END_WITHIN_S``
    after the follow began), and its record."""
    phase: str = "gate"
    """Where its client is, for a stall's report: ``gate`` (waiting for its turn),
    ``POST``, ``DELETE``, ``follow`` (reading its followed output), ``wait`` (for
    its end, on the store's events), ``GET`` (its final record), ``done``."""


def _plan(rng: random.Random) -> list[Planned]:
    kinds = [k for k, share in KINDS.items() for _ in range(round(share * JOBS))]
    kinds += ["noop"] * (JOBS - len(kinds))
    rng.shuffle(kinds)
    alphabet = string.ascii_letters + string.digits + " .,-_"
    plan = []
    for i, kind in enumerate(kinds):
        body: dict[str, Any] = {}
        records: list[str] = []
        if kind == "upper":
            records = ["".join(rng.choices(alphabet, k=rng.randint(0, 24)))
                       for _ in range(rng.randint(1, 4))]
            body["input"] = records
        elif kind == "exitcode":
            body["args"] = [str(rng.randint(1, 100))]
        elif kind == "spin":
            body["limits"] = {"timeout_s": 0.2}
        elif kind in ("cancel_queued", "cancel_run"):
            body["args"] = ["200"]
        elif kind == "victim":
            body["args"] = [str(VICTIM_TICKS)]
        plan.append(Planned(TENANT_NAMES[i % len(TENANT_NAMES)], kind, body, records))
    return plan


class Killer:
    """SIGKILLs the worker of a random busy pod whose module is running.

    Woken (by :meth:`offer`) each time a victim job prints its first line, it
    picks at random among the busy pods holding a victim that prints and
    started less than ``KILL_WITHIN_S`` ago, and kills that worker's process.
    The check and the kill happen in one step of the event loop the daemon
    runs on, so the job is known to be unfinished when its worker dies. Stops
    by itself after ``limit`` kills.
    """

    def __init__(self, daemon: Daemon, rng: random.Random, limit: int) -> None:
        self.daemon = daemon
        self.rng = rng
        self.limit = limit
        self.printing: set[str] = set()
        self.killed: dict[str, str] = {}
        """job id -> the pod whose worker was killed under it"""
        self._offers: asyncio.Queue[str | None] = asyncio.Queue()

    def offer(self, job_id: str) -> None:
        self.printing.add(job_id)
        self._offers.put_nowait(job_id)

    def stop(self) -> None:
        self._offers.put_nowait(None)

    def _killable(self, job_id: str | None) -> bool:
        job = self.daemon.store.get(job_id) if job_id else None  # type: ignore[arg-type]
        return (job is not None and job.id in self.printing and job.id not in self.killed
                and job.state is JobState.RUNNING and job.started_at is not None
                and (utcnow() - job.started_at).total_seconds() < KILL_WITHIN_S)

    async def run(self) -> None:
        pool, backend = self.daemon.pool, self.daemon.backend
        assert pool is not None and backend is not None
        while len(self.killed) < self.limit and await self._offers.get() is not None:
            busy = [w for w in pool.workers.values()
                    if w.state is WorkerState.BUSY and self._killable(w.job)]
            if not busy:
                continue
            worker = self.rng.choice(busy)
            pid = backend.pid_of(worker.pod)  # type: ignore[attr-defined]
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            assert worker.job is not None
            self.killed[worker.job] = worker.pod


async def _delete(client: Tenant, job: Planned) -> str:
    async with client.request("DELETE", f"/v1/jobs/{job.id}") as r:
        state = str((await r.json()).get("state"))
        job.deletes.append((r.status, state))
        return state


class Progress:
    """How many of the planned jobs are done with (ended, refused or stuck)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._changed = asyncio.Event()

    def one_done(self) -> None:
        self.done += 1
        self._changed.set()

    async def watch(self, daemon: Daemon, plan: list[Planned],
                    session: aiohttp.ClientSession) -> None:
        """Fail as soon as ``STALL_S`` pass without a job done (a stalled daemon)."""
        while self.done < self.total:
            self._changed.clear()
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation
                # that comes as a job ends (the task group's, when another task failed),
                # and a "stall" was reported 90 s after the soak's real error
                async with asyncio.timeout(STALL_S):
                    await self._changed.wait()
            except TimeoutError:
                raise AssertionError(
                    f"no job ended for {STALL_S} s: stalled after {self.report(daemon)}\n"
                    f"{_stall_report(daemon, plan, session)}\n"
                    f"the tasks were waiting at (outermost await <- innermost):\n"
                    f"{_where_tasks_wait()}") from None

    def report(self, daemon: Daemon) -> str:
        pool = daemon.pool.figures() if daemon.pool else None
        states = {s.value: n for s, n in daemon.store.counts().items() if n}
        return f"{self.done} of {self.total} jobs done; jobs by state {states}; pool {pool}"


def _stall_report(daemon: Daemon, plan: list[Planned], session: aiohttp.ClientSession) -> str:
    """What tells the suspects of a stall apart: the jobs in flight as their clients
    see them beside their records in the store (a client hung on a job that ended,
    or jobs that never end), the scheduler's queue, quota slots and running jobs (a
    tenant's slot never given back, or a dispatcher not woken with jobs queued and
    workers idle), the pool's workers, and the clients' connections."""
    scheduler, pool = daemon.scheduler, daemon.pool
    assert scheduler is not None and pool is not None
    in_flight = [j for j in plan if j.phase not in ("gate", "done")]
    stored = {j.id: daemon.store.get(j.id) for j in in_flight  # type: ignore[arg-type]
              if j.id is not None}

    def state(job: Planned) -> str:
        record = stored.get(job.id)
        return "not accepted yet" if record is None else record.state.value

    pairs = Counter(f"{j.phase}/{state(j)}" for j in in_flight)
    queued = {t: n for t in TENANT_NAMES if (n := scheduler.queue.size(t))}  # type: ignore[arg-type]
    dispatcher = [t for t in asyncio.all_tasks() if t.get_name() == "daemon:scheduler"]
    lines = [
        f"{len(in_flight)} jobs in flight, by client phase/state in the store: {dict(pairs)}",
        f"scheduler: queued by tenant {queued} ({len(scheduler.queue)} in all); quota slots "
        f"taken by tenant {scheduler.active}; running {len(scheduler.running)}; parked "
        f"{len(scheduler.parked)}; wake pending {scheduler._wake.is_set()}; dispatcher task "
        f"{'alive' if dispatcher and not dispatcher[0].done() else 'GONE'}; partitions "
        f"leased {scheduler.leases.leased}",
        f"daemon tasks failed: {daemon.tasks.failed.is_set()} ({daemon.tasks.error!r}); "
        f"pool tasks failed: {pool.tasks.failed.is_set()} ({pool.tasks.error!r})",
        f"client connections: {len(connector._acquired)} taken of {connector.limit}"
        if (connector := session.connector) else "no connector",
        "pool workers: " + ", ".join(
            f"{w.pod} {w.state.value}{' job ' + w.job if w.job else ''}"
            f"{' settling' if w.settling else ''}" for w in pool.workers.values()),
    ]
    for run in list(scheduler.running.values())[:16]:
        record = daemon.store.get(run.job_id)
        lines.append(
            f"  running {run.job_id} ({run.tenant}): {record.state.value if record else None}, "
            f"worker {run.worker.pod} {run.worker.state.value} "
            f"(in the pool: {pool.workers.get(run.worker.pod) is run.worker}), "
            f"cancel {run.cancel.is_set()}, output done {run.done}")
    shown: Counter[str] = Counter()
    for job in in_flight:  # a few of each phase/state
        shown[key := f"{job.phase}/{state(job)}"] += 1
        if shown[key] > 4:
            continue
        record = stored.get(job.id)
        lines.append(
            f"  in flight: {job.kind} {job.tenant} {job.id} client at {job.phase}, "
            f"DELETEs {job.deletes}, first line {job.first_line!r}; "
            + ("no record" if record is None else
               f"{record.state.value} pod {record.pod} assigned {record.assigned_at} "
               f"started {record.started_at} finished {record.finished_at} "
               f"error {record.error!r}; running here: {record.id in scheduler.running}"))
    return "\n".join(lines)


def _frame(coro: Any) -> str:
    frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
    if frame is None:
        return repr(coro)
    path = frame.f_code.co_filename
    for root, shown in (("/site-packages/", ""), ("/poold/", "poold/"), ("/tests/", "tests/"),
                        ("/asyncio/", "asyncio/")):
        if root in path:
            path = shown + path.split(root, 1)[1]
            break
    return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"


def _where_tasks_wait() -> str:
    """Each running task's chain of awaits, counted: where a stall hangs. The
    project's own frames and the innermost one (what it waits for) are shown."""
    found: Counter[str] = Counter()
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        chain = [coro]
        while (inner := getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
               ) is not None and (hasattr(inner, "cr_frame") or hasattr(inner, "gi_frame")):
            chain.append(coro := inner)
        frames = [_frame(c) for c in chain]
        shown = [f for f in frames[:-1] if f.startswith(("poold/", "tests/"))] + frames[-1:]
        found[f"{task.get_name().rstrip('0123456789')}  {' <- '.join(shown)}"] += 1
    return "\n".join(f"{n:4} {where}" for where, n in found.most_common(40))


async def _run_one(job: Planned, client: Tenant, modules: dict[str, str],
                   killer: Killer, gate: asyncio.Semaphore, progress: Progress) -> None:
    await _run_gated(job, client, modules, killer, gate)
    job.phase = "done"
    progress.one_done()


async def _run_gated(job: Planned, client: Tenant, modules: dict[str, str],
                     killer: Killer, gate: asyncio.Semaphore) -> None:
    async with gate:
        job.phase = "POST"
        body = {"module": modules[MODULE_OF[job.kind]], **job.body}
        async with client.request("POST", "/v1/jobs", json=body) as r:
            job.status = r.status
            record = await r.json()
        if r.status != 202:
            return
        job.id = record["id"]
        if job.kind == "cancel_queued":
            job.phase = "DELETE"
            await _delete(client, job)
        elif job.kind in ("cancel_run", "victim"):
            job.phase = "follow"
            try:
                async with asyncio.timeout(END_WITHIN_S):
                    await _follow(job, client, killer)
            except (aiohttp.ClientPayloadError, TimeoutError) as e:
                # reported with the others' outcomes, not by cutting them off
                job.follow_cut = (f"{type(e).__name__}: {e} (first line {job.first_line!r}); "
                                  f"its record: {client.daemon.store.get(job.id)}")
        job.phase = "wait"
        try:
            await wait_done(client.daemon, job.id, timeout=END_WITHIN_S)
        except TimeoutError:  # reported with the others' outcomes, not by cutting them off
            pool = client.daemon.pool.figures() if client.daemon.pool else None
            job.stuck = f"{client.daemon.store.get(job.id)}; pool {pool}"
            return
        job.phase = "GET"
        job.final = await client.json("GET", f"/v1/jobs/{job.id}", 200)


async def _follow(job: Planned, client: Tenant, killer: Killer) -> None:
    """Read the job's followed output to its end: a victim is offered to the killer
    and a cancel_run job DELETEd once the first line is there."""
    async with client.request("GET", f"/v1/jobs/{job.id}/output?follow=true") as r:
        assert r.status == 200
        job.first_line = await r.content.readline()
        if job.first_line == b"tick 1\n":  # anything else is reported below
            if job.kind == "victim":
                killer.offer(job.id)
            else:
                job.phase = "DELETE"
                await _delete(client, job)
                job.phase = "follow"
        await r.read()


async def _list_all(client: Tenant) -> list[dict[str, Any]]:
    """Every job of the tenant, following the ``next`` links."""
    jobs: list[dict[str, Any]] = []
    path: str | None = "/v1/jobs?limit=97"
    while path is not None:
        page = await client.json("GET", path, 200)
        jobs.extend(page["jobs"])
        path = page["next"]
    return jobs


def _metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _previous(job: Planned, accepted: list[Planned]) -> str:
    """The job that held ``job``'s output partition before it (for diagnostics)."""
    assert job.final is not None
    partition = job.final["output"]["partition"]
    earlier = [j for j in accepted if j.tenant == job.tenant and j.final is not None
               and j.final["output"] and j.final["output"]["partition"] == partition
               and j.final["assigned_at"] < job.final["assigned_at"]]
    if not earlier:
        return "none"
    last = max(earlier, key=lambda j: j.final["assigned_at"])  # type: ignore[index]
    f = last.final
    assert f is not None
    return (f"{last.kind} {last.id} {f['state']} ({f['error']}), output {f['output']}, "
            f"assigned {f['assigned_at']}, finished {f['finished_at']}")


def _problem(job: Planned, killed: dict[str, str]) -> str | None:
    """What is wrong with how the job ended, or None."""
    final = job.final
    assert final is not None and job.id is not None
    state, error = final["state"], final["error"] or ""
    if job.id in killed:
        if state != "error" or "worker" not in error or "SIGKILL" not in error:
            return f"its worker was SIGKILLed, yet it ended {state}: {error!r}"
        return None
    if state != EXPECTED[job.kind]:
        return f"ended {state} ({error!r}), not {EXPECTED[job.kind]}; DELETEs: {job.deletes}"
    if job.kind == "exitcode" and final["exit_code"] != int(job.body["args"][0]):
        return f"exit code {final['exit_code']}, not {job.body['args'][0]}"
    if job.kind.startswith("cancel") and (len(job.deletes) != 1 or job.deletes[0][0] != 200
                                          or job.deletes[0][1] == "queued"):
        return f"one DELETE should have stopped it (200, not 'queued'); answers: {job.deletes}"
    return None


def _first_line_problem(job: Planned) -> str | None:
    """A followed output must begin with the job's own first line."""
    if job.kind in ("cancel_run", "victim") and job.first_line != b"tick 1\n":
        return (f"its followed output began with {job.first_line!r}, not b'tick 1\\n'; "
                f"the partition's previous job: ")
    return None


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """``--seed N`` replays a run; otherwise a fresh one, printed (shown on failure)."""
    given = request.config.getoption("--seed")
    value = int(given) if given is not None else random.randrange(1 << 32)
    print(f"soak seed {value} (replay: pytest tests/test_soak.py --seed {value})")
    return value


@pytest.mark.timeout(SOAK_WITHIN_S + 60)
async def test_soak_nothing_accepted_is_lost(start_daemon: DaemonFactory,
                                             session: aiohttp.ClientSession, seed: int) -> None:
    progress = Progress(JOBS)
    daemons: list[Daemon] = []
    try:
        async with asyncio.timeout(SOAK_WITHIN_S):
            await _soak(start_daemon, session, seed, progress, daemons)
    except TimeoutError:
        got = progress.report(daemons[0]) if daemons else "before the daemon started"
        slow = AssertionError(f"the soak took longer than {SOAK_WITHIN_S} s; {got}")
        slow.add_note(_replay(seed))
        raise slow from None
    except BaseException as e:
        e.add_note(_replay(seed))
        raise


def _replay(seed: int) -> str:
    return f"soak seed {seed}: replay with pytest tests/test_soak.py --seed {seed}"


async def _soak(start_daemon: DaemonFactory, session: aiohttp.ClientSession, seed: int,
                progress: Progress, daemons: list[Daemon]) -> None:
    rng = random.Random(seed)
    t0 = time.monotonic()
    daemon = await start_daemon(**_settings())
    daemons.append(daemon)
    assert daemon.pool is not None and daemon.backend is not None
    clients = {name: Tenant(daemon, session, name) for name in TENANT_NAMES}
    modules: dict[str, dict[str, str]] = {}
    for name, client in clients.items():  # a tenant sees only the modules it uploaded
        modules[name] = {m: await client.upload(module(m)) for m in set(MODULE_OF.values())}
    plan = _plan(rng)
    killer = Killer(daemon, random.Random(seed + 1), KILLS)
    killing = asyncio.create_task(killer.run(), name="soak-killer")
    gate = asyncio.Semaphore(IN_FLIGHT)

    started = time.monotonic()
    try:
        async with asyncio.TaskGroup() as group:
            watching = group.create_task(progress.watch(daemon, plan, session),
                                         name="soak-progress")
            for job in plan:
                group.create_task(_run_one(job, clients[job.tenant], modules[job.tenant],
                                           killer, gate, progress))
        assert watching.done()
    finally:
        killer.stop()
        await killing
    elapsed = time.monotonic() - started

    accepted = [j for j in plan if j.status == 202]
    refused = Counter(j.status for j in plan if j.status != 202)
    states = Counter(j.final["state"] for j in accepted if j.final is not None)
    samples = _metric_samples(await clients["alpha"].text("/metrics"))
    worker_failures = {labels["reason"]: v for labels, v
                       in samples.get("poold_worker_failures_total", []) if v}
    print(
        f"\nsoak (seed {seed}): {len(accepted)} of {JOBS} jobs accepted from "
        f"{len(TENANT_NAMES)} tenants, all ended in {elapsed:.1f} s "
        f"({len(accepted) / elapsed:.1f} jobs/s): "
        + ", ".join(f"{s} {states[s]}" for s in TERMINAL)
        + f"; workers SIGKILLed under a job: {len(killer.killed)}; "
        f"worker failures by reason: {worker_failures}"
    )
    assert not refused, f"submissions refused: {dict(refused)}"
    stuck = [f"{j.kind} {j.id}: {j.stuck}" for j in accepted if j.stuck]
    assert not stuck, (f"{len(stuck)} accepted jobs had not ended {END_WITHIN_S} s after "
                       "they were submitted:\n" + "\n".join(stuck[:10]))
    cut = [f"{j.kind} {j.id}: {j.follow_cut}" for j in accepted if j.follow_cut]
    assert not cut, (f"{len(cut)} followed outputs did not end with their job:\n"
                     + "\n".join(cut[:10]))

    # every accepted job reached exactly one terminal state, in the API ...
    for name, client in clients.items():
        mine = {j.id: j for j in accepted if j.tenant == name}
        listed = await _list_all(client)
        ids = [j["id"] for j in listed]
        assert len(ids) == len(set(ids)), f"{name}: a job is listed twice"
        assert set(ids) == set(mine), f"{name}: the listed jobs are not the accepted ones"
        for record in listed:
            assert record["state"] in TERMINAL, record
            assert record["state"] == mine[record["id"]].final["state"]  # type: ignore[index]
    assert sum(states[s] for s in TERMINAL) == len(accepted) == JOBS
    # ... and in the metrics
    submitted = {labels["tenant"]: v for labels, v in samples["poold_jobs_submitted_total"]}
    finished: Counter[tuple[str, str]] = Counter()
    for labels, value in samples["poold_jobs_finished_total"]:
        finished[(labels["tenant"], labels["state"])] += int(value)
    for name in TENANT_NAMES:
        mine = [j for j in accepted if j.tenant == name]
        per_state = Counter(j.final["state"] for j in mine)  # type: ignore[index]
        assert submitted.get(name) == len(mine), (name, submitted.get(name), len(mine))
        assert sum(finished[(name, s)] for s in TERMINAL) == len(mine), (name, finished)
        for state in TERMINAL:
            assert finished[(name, state)] == per_state[state], (name, state, finished)

    # outputs: a sample of the upper jobs, and some victims that were spared
    uppers = [j for j in accepted if j.kind == "upper"]
    spared = [j for j in accepted if j.kind == "victim" and j.id not in killer.killed]
    wanted = [(j, [r.upper() for r in j.input]) for j in rng.sample(uppers, min(100, len(uppers)))]
    wanted += [(j, [f"tick {i}" for i in range(1, VICTIM_TICKS + 1)]) for j in spared[:10]]
    wrong = []
    for job, expected in wanted:
        out = (await clients[job.tenant].text(f"/v1/jobs/{job.id}/output")).splitlines()
        if out != expected:
            wrong.append(
                f"{job.kind} {job.id} {job.final['output']}: {out[:5]}... "  # type: ignore[index]
                f"for {expected[:5]}...; the partition's previous job: {_previous(job, accepted)}")
    assert not wrong, f"{len(wrong)} outputs are wrong:\n" + "\n".join(wrong)

    # every job ended as its kind says; the killed ones with an error naming the worker
    problems = [f"{j.kind} {j.id}: {p}" for j in accepted
                if (p := _problem(j, killer.killed)) is not None]
    problems += [f"{j.kind} {j.id}: {p}{_previous(j, accepted)}" for j in accepted
                 if (p := _first_line_problem(j)) is not None]
    assert not problems, f"{len(problems)} jobs ended wrongly:\n" + "\n".join(problems[:20])
    assert len(killer.killed) >= KILLS * 0.8, f"only {len(killer.killed)} workers were killed"
    # no worker failed but those killed: none missed its "ready", none died idle
    assert worker_failures == {"busy_lost": len(killer.killed)}, worker_failures

    # the pool is back at its target ...
    pool = daemon.pool
    await pool.wait_until(lambda: pool.figures()["idle"] == MIN_IDLE and all(
        pool.figures()[k] == 0 for k in ("busy", "starting", "deleting")), 60)
    figures = await clients["alpha"].json("GET", "/v1/pool", 200)
    assert figures["idle"] == MIN_IDLE and figures["busy"] == 0, figures
    # ... with no worker process that no worker stands for, and none after the stop
    workers = {daemon.backend.pid_of(w) for w in pool.workers}  # type: ignore[attr-defined]
    assert None not in workers and len(workers) == MIN_IDLE
    parents = {parent(pid) for pid in workers}  # type: ignore[arg-type]
    assert len(parents) == 1, "the workers are not all children of one fork server"
    forkserver = parents.pop()
    processes = children(forkserver)
    assert processes == workers, f"stray worker processes: {processes - workers}"
    slots = daemon.settings.slots.root
    await daemon.stop()
    assert not [p for p in processes if running(p)], "worker processes outlived the daemon"
    assert not running(forkserver), "the fork server outlived the daemon"
    assert not [p for p in slots.iterdir() if p.name.startswith("poold-w-")], "slots left"
    print(f"soak: every check passed; {time.monotonic() - t0:.1f} s in all")
