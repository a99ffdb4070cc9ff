"""The pool controller: keep ``min_idle`` workers waiting, never exceed ``max_pods``.

Level-triggered: each pass compares what the backend reported (starting,
idle, busy, deleting workers) with what is wanted (busy + max(min_idle,
demand)) and acts on the difference, so a lost event only delays a
correction. Creations are paced (``max_starting`` in flight) and back off
after failures, so a broken runner never becomes a hot loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from poold.backends.base import Backend, BackendUnavailable, WorkerEvent
from poold.config import PoolSettings
from poold.metrics import Metrics
from poold.retry import RetryPolicy
from poold.sched.agent_link import Link
from poold.sched.sizing import AUTO_IDLE_TTL_S, Sizer, retirable
from poold.slots import SLOT_NAME, Slot
from poold.tasks import Supervisor
from poold.types import JobId, PodName, TenantName, new_pod_name

log = structlog.get_logger(__name__)


class WorkerState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DELETING = "deleting"


@dataclass
class Worker:
    pod: PodName
    state: WorkerState = WorkerState.STARTING
    created: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    endpoint: str | None = None
    token: str | None = None
    """The secret its agent requires (from the backend's ready event)."""
    job: JobId | None = None
    lost: asyncio.Future[str] | None = None
    """Resolved with a reason if the worker disappears while it holds a job."""
    link: Link | None = None
    """The pre-opened line to the worker's agent (see :mod:`poold.sched.agent_link`)."""
    tenant: TenantName | None = None
    """Set while the worker is hot: it ran a job of this tenant and may take only
    that tenant's jobs (``pool.reuse = "tenant"``)."""
    jobs: int = 0
    """Jobs this worker has taken."""
    settling: bool = False
    """Taken for a job that has not started yet: its replacement waits until it
    has, so a fork does not compete with the job's start for the CPU."""
    lapsed: bool = False
    """It was idle, then reported not ready: waiting (as STARTING) to be ready again."""



LostCallback = Callable[[Worker, str], None]


class Pool:
    def __init__(
        self,
        *,
        backend: Backend,
        settings: PoolSettings,
        slots_root: Path,
        metrics: Metrics,
        demand: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.slots_root = slots_root
        self.metrics = metrics
        self.demand = demand
        self.sizer = Sizer(clock=clock)
        """The idle target (``pool.min_idle``, or measured with ``"auto"``)."""
        self.workers: dict[PodName, Worker] = {}
        self.on_ready: Callable[[Worker], None] = lambda worker: None
        self.on_orphan: Callable[[Worker], bool] = lambda worker: False
        """Offered a worker found holding a job; True if someone follows that job."""
        self._wake = asyncio.Event()
        self._failures = 0
        self._not_before = 0.0
        self.tasks = Supervisor("pool")
        """The controller: started again after a crash, with the failure backoff."""
        self.chores = Supervisor("pool")
        """Tasks that end by themselves (a removal, a retirement, a link's close);
        :meth:`stop` waits for them."""
        self._idle_changed = asyncio.Event()
        self._stopping = False
        self._removing: set[PodName] = set()
        self.backend_ok = True
        """False while the backend refuses to create workers (submissions get 503)."""

    # -- figures ---------------------------------------------------------------

    def count(self, state: WorkerState) -> int:
        return sum(1 for w in self.workers.values() if w.state is state)

    def hot_idle(self) -> int:
        return sum(1 for w in self.workers.values()
                   if w.state is WorkerState.IDLE and w.tenant is not None)

    def target(self) -> int:
        """Busy workers, hot idle ones (they serve only their tenant), and
        ``min_idle`` (or the demand) more that any job can take."""
        held = sum(1 for w in self.workers.values()
                   if w.state is WorkerState.BUSY and not w.settling) + self.hot_idle()
        return min(self.settings.max_pods, held + max(self.idle_target(), self.demand()))

    def idle_target(self) -> int:
        return self.sizer.idle_target(min_idle=self.settings.min_idle,
                                      floor=self.settings.min_idle_floor,
                                      max_pods=self.settings.max_pods)

    def arrived(self) -> None:
        """A job was submitted (the arrival rate of ``min_idle = "auto"``)."""
        self.sizer.meter.arrived()

    def figures(self) -> dict[str, Any]:
        return {
            "idle": self.count(WorkerState.IDLE),
            "busy": self.count(WorkerState.BUSY),
            "starting": self.count(WorkerState.STARTING),
            "deleting": self.count(WorkerState.DELETING),
            "hot": self.hot_idle(),
            "target": self.target(),
            "min_idle": self.settings.min_idle,
            "idle_target": self.idle_target(),
            "max": self.settings.max_pods,
            "sizing": {"min_idle_floor": self.settings.min_idle_floor,
                       "idle_ttl_s": self.settings.idle_ttl_s, **self.sizer.figures()},
        }

    def _export(self) -> None:
        for state in WorkerState:
            self.metrics.pool_workers.labels(state.value).set(self.count(state))
        self.metrics.pool_target.set(self.target())
        self.metrics.pool_max.set(self.settings.max_pods)
        self.metrics.pool_idle_target.set(self.idle_target())
        short, long = self.sizer.meter.rates()
        self.metrics.pool_arrival_rate.labels("short").set(short)
        self.metrics.pool_arrival_rate.labels("long").set(long)
        self.metrics.pool_start_p90.labels("0.9").set(self.sizer.meter.start_p90())
        last = self.sizer.last
        self.metrics.pool_sizing_need.set(0.0 if last is None else last.need)
        self.metrics.pool_sizing_margin.set(0.0 if last is None else last.margin)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        await self.backend.start(self._on_event)
        self.cleanup_slots()
        self.tasks.run(self._run, name="controller", restart=self._backoff())

    async def stop(self, *, delete_workers: bool = True) -> None:
        """Stop managing the pool. Workers are deleted unless ``delete_workers`` is
        False: pods a restarted daemon (or the other replica) will adopt."""
        self._stopping = True
        await self.tasks.stop()
        for worker in list(self.workers.values()):
            if worker.link is not None:
                await worker.link.close()
            if delete_workers:
                with contextlib.suppress(BackendUnavailable):
                    await self.backend.delete(worker.pod)
        await self.backend.stop()
        await self.chores.wait()
        if delete_workers:
            for worker in list(self.workers.values()):
                Slot.of(self.slots_root, worker.pod).remove()
        self.workers.clear()

    def poke(self) -> None:
        """Something changed (demand, a job ended): reconcile soon."""
        self._wake.set()

    async def wait_until(self, predicate: Callable[[], bool], within_s: float) -> None:
        """For tests and start-up: wait until the pool looks a certain way."""
        async with asyncio.timeout(within_s):
            while not predicate():
                self._idle_changed.clear()
                await self._idle_changed.wait()

    async def _run(self) -> None:
        while True:
            try:
                await self._reconcile()
                self.backend_ok = True
            except BackendUnavailable as e:
                log.warning("backend unavailable; will retry", error=str(e))
                self.backend_ok = False
                self._note_failure("backend_unavailable")
            self._export()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
            # cancellation that arrives as the event fires, and stop() would hang
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()

    async def _reconcile(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if (
                worker.state is WorkerState.STARTING
                and now - worker.created > self.settings.start_timeout_s
            ):
                log.warning("worker not ready in time; replacing it", pod=worker.pod)
                self._note_failure("start_timeout")
                await self._retire(worker)
            elif worker.state is WorkerState.IDLE and self._idled_out(worker, now):
                reason = "hot_idle_ttl" if worker.tenant is not None else "idle_ttl"
                self.metrics.pool_retirements.labels(reason).inc()
                await self._retire(worker)
        await self._retire_surplus(now)
        if now < self._not_before:
            self._wake_at(self._not_before)
            return
        live = sum(1 for w in self.workers.values() if w.state is not WorkerState.DELETING)
        starting = self.count(WorkerState.STARTING)
        room = min(
            self.target() - live,
            self.settings.max_pods - len(self.workers),
            self.settings.max_starting - starting,
        )
        for _ in range(max(0, room)):
            await self._create()

    def _idled_out(self, worker: Worker, now: float) -> bool:
        """Idle past its TTL: ``hot_idle_ttl_s`` for a hot worker (held for one
        tenant), ``idle_ttl_s`` for any (0 = never). With ``min_idle = "auto"`` a
        generic worker is only retired as surplus (:meth:`_retire_surplus`): one
        within the target would just be replaced."""
        if worker.ready_at is None:
            return False
        idle = now - worker.ready_at
        hot_ttl = self.settings.hot_idle_ttl_s
        if worker.tenant is not None and hot_ttl > 0 and idle > hot_ttl:
            return True
        if self.settings.min_idle == "auto":
            return False
        return self.settings.idle_ttl_s > 0 and idle > self.settings.idle_ttl_s

    async def _retire_surplus(self, now: float) -> None:
        """Idle workers beyond the target (it dropped, or min_idle was lowered) go,
        longest idle first, once idle ``idle_ttl_s`` (with jitter); with
        ``min_idle = "auto"`` and no TTL, after :data:`AUTO_IDLE_TTL_S`."""
        ttl = self.settings.idle_ttl_s
        if ttl == 0 and self.settings.min_idle == "auto":
            ttl = AUTO_IDLE_TTL_S
        live = sum(1 for w in self.workers.values() if w.state is not WorkerState.DELETING)
        idle = [(w.pod, w.ready_at) for w in self.workers.values()
                if w.state is WorkerState.IDLE and w.tenant is None and w.ready_at is not None]
        due, next_at = retirable(idle, surplus=live - self.target(), ttl_s=ttl, now=now)
        for pod in due:
            worker = self.workers[PodName(pod)]
            if worker.state is WorkerState.IDLE:
                log.info("retiring a surplus idle worker", pod=pod,
                         idle_s=round(now - (worker.ready_at or now), 1))
                self.metrics.pool_retirements.labels("surplus").inc()
                await self._retire(worker)
        if next_at is not None:
            self._wake_at(next_at)

    def _wake_at(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, when - time.monotonic()), self._wake.set)

    def drop_link(self, worker: Worker) -> None:
        """Close the worker's link in the background; it is of no further use."""
        link, worker.link = worker.link, None
        if link is not None:
            self.chores.spawn(link.close(), name=f"close-link-{worker.pod}")

    def _backoff(self) -> RetryPolicy:
        """The pause after failures to start a worker (``pool.failure_backoff_s``)."""
        return RetryPolicy(attempts=None, backoff_s=self.settings.failure_backoff_s,
                           backoff_max_s=self.settings.failure_backoff_max_s, jitter=0)

    def _note_failure(self, reason: str) -> None:
        """No new worker is started for a while: the retry policy's pause, from
        ``pool.failure_backoff_s`` doubling to ``failure_backoff_max_s``."""
        self.metrics.worker_failures.labels(reason).inc()
        self._failures += 1
        policy = self._backoff()
        delay = policy.delay(self._failures)
        policy.log_retry(log, what="starting a worker", attempt=self._failures + 1,
                         error=reason, pause_s=delay)
        self._not_before = time.monotonic() + delay

    async def _create(self) -> None:
        pod = new_pod_name()
        worker = Worker(pod)
        self.workers[pod] = worker
        self.sizer.creating(pod)
        self.metrics.pool_creations.inc()
        try:
            # in a thread: on NFS a mkdir is a round trip to the server
            await asyncio.to_thread(Slot.of(self.slots_root, pod).create)
            await self.backend.create(pod)
        except (BackendUnavailable, OSError):
            del self.workers[pod]
            await asyncio.to_thread(Slot.of(self.slots_root, pod).remove)
            raise

    async def _retire(self, worker: Worker) -> None:
        worker.state = WorkerState.DELETING
        worker.settling = False
        try:
            await self.backend.delete(worker.pod)
        except BackendUnavailable as e:
            log.warning("could not delete worker; will retry", pod=worker.pod, error=str(e))
        self._idle_changed.set()
        self._wake.set()

    # -- events from the backend ----------------------------------------------

    def _on_event(self, event: WorkerEvent) -> None:
        worker = self.workers.get(event.pod)
        if worker is None:
            self._adopt(event)
            return
        if event.kind == "ready" and worker.state is WorkerState.STARTING:
            worker.state = WorkerState.IDLE
            worker.ready_at = time.monotonic()
            worker.endpoint = event.endpoint
            worker.token = event.token
            if event.tenant is not None:  # adopted before it was ready: hot all the same
                worker.tenant = event.tenant
                worker.jobs = max(worker.jobs, event.jobs)
            if worker.lapsed:
                worker.lapsed = False
                log.info("worker is ready again", pod=event.pod)
            else:
                self.metrics.worker_start.observe(worker.ready_at - worker.created)
                self.sizer.ready(event.pod)
                self._failures = 0
            self._idle_changed.set()
            self.on_ready(worker)
        elif event.kind == "unready" and worker.state is WorkerState.IDLE:
            # no job goes to it until it is ready again; if that takes longer than a
            # start may, the start timeout replaces it
            log.warning("idle worker is no longer ready", pod=event.pod, reason=event.reason)
            worker.state = WorkerState.STARTING
            worker.created = time.monotonic()
            worker.lapsed = True
            self.drop_link(worker)
            self._idle_changed.set()
        elif event.kind == "gone":
            if event.pod in self._removing:
                return
            was = worker.state
            worker.state = WorkerState.DELETING  # counted until its slot is gone too
            self.drop_link(worker)
            self._remove_slot(worker)
            if was is WorkerState.STARTING and not self._stopping:
                log.warning("worker died while starting", pod=event.pod, reason=event.reason)
                self._note_failure("start_failed")
            elif was is WorkerState.IDLE and not self._stopping:
                log.warning("idle worker died", pod=event.pod, reason=event.reason)
                self.metrics.worker_failures.labels("idle_lost").inc()
            elif was is WorkerState.BUSY:
                self.metrics.worker_failures.labels("busy_lost").inc()
                if worker.lost is not None and not worker.lost.done():
                    worker.lost.set_result(event.reason or "the worker disappeared")
            self._idle_changed.set()
        self._export()
        self._wake.set()

    def _remove_slot(self, worker: Worker) -> None:
        """Remove a gone worker's slot in a thread (on NFS a removal is many round
        trips), then forget the worker."""
        self._removing.add(worker.pod)

        async def remove() -> None:
            try:
                await asyncio.to_thread(Slot.of(self.slots_root, worker.pod).remove)
            finally:
                self._removing.discard(worker.pod)
                if self.workers.get(worker.pod) is worker:
                    del self.workers[worker.pod]
                self._idle_changed.set()
                self._export()
                self._wake.set()

        self.chores.spawn(remove(), name=f"remove-{worker.pod}")

    def _adopt(self, event: WorkerEvent) -> None:
        """A worker this daemon did not create (it ran before a restart, or another
        replica made it). Idle ones join the pool; ones holding a job nobody here
        follows are orphans and are deleted."""
        if event.kind == "gone":
            Slot.of(self.slots_root, event.pod).remove()
            return
        worker = Worker(event.pod, tenant=event.tenant, jobs=event.jobs)
        self.workers[event.pod] = worker
        if event.kind == "ready" and event.job is None:
            worker.state = WorkerState.IDLE
            worker.ready_at = time.monotonic()
            worker.endpoint = event.endpoint
            worker.token = event.token
            # a hot one stays its tenant's: it takes no other tenant's job, ever
            log.info("adopted an idle worker", pod=event.pod, hot_for=event.tenant)
            self._idle_changed.set()
            self.on_ready(worker)
        elif event.kind == "ready":
            worker.state = WorkerState.BUSY
            worker.job = event.job
            worker.endpoint = event.endpoint
            worker.token = event.token
            if not self.on_orphan(worker):
                log.warning("deleting a worker that holds a job nobody follows",
                            pod=event.pod, job=event.job)
                self.chores.spawn(self._retire(worker), name=f"retire-{worker.pod}")
        self._wake.set()

    def cleanup_slots(self) -> int:
        """Remove slot folders whose worker is unknown (left by a crash)."""
        removed = 0
        if not self.slots_root.is_dir():
            return 0
        for entry in self.slots_root.iterdir():
            if SLOT_NAME.fullmatch(entry.name) and PodName(entry.name) not in self.workers:
                Slot(entry).remove()
                removed += 1
        if removed:
            log.info("removed orphan slots", count=removed)
        return removed

    # -- used by the scheduler -------------------------------------------------

    def has_idle_for(self, tenant: TenantName) -> bool:
        return any(w.state is WorkerState.IDLE and w.tenant in (None, tenant)
                   for w in self.workers.values())

    def take_idle(self, tenant: TenantName | None = None) -> Worker | None:
        """An idle worker for a job of ``tenant``, now busy: the most recently used
        hot one of that tenant, else the longest-idle generic one; None if none."""
        hot = [w for w in self.workers.values()
               if w.state is WorkerState.IDLE and w.tenant is not None and w.tenant == tenant]
        if hot:
            worker = max(hot, key=lambda w: w.ready_at or 0.0)
        else:
            idle = [w for w in self.workers.values()
                    if w.state is WorkerState.IDLE and w.tenant is None]
            if not idle:
                return None
            worker = min(idle, key=lambda w: w.ready_at or 0.0)
        worker.jobs += 1
        worker.state = WorkerState.BUSY
        worker.settling = True
        worker.lost = asyncio.get_running_loop().create_future()
        return worker

    def settled(self, worker: Worker) -> None:
        """The worker's job has started: now is the time to replace it."""
        if worker.settling:
            worker.settling = False
            self._wake.set()

    async def claim(self, worker: Worker, job: JobId) -> bool:
        """Fence the worker for ``job``. A worker we lose the claim on belongs to
        whoever won it: we forget it rather than delete it under their job."""
        try:
            won = await self.backend.claim(worker.pod, job)
        except BackendUnavailable as e:
            log.warning("could not claim a worker; trying another", pod=worker.pod, error=str(e))
            worker.state = WorkerState.IDLE
            worker.settling = False
            self._wake.set()
            return False
        if won:
            worker.job = job
        else:
            log.warning("lost the claim on a worker to someone else", pod=worker.pod)
            self.workers.pop(worker.pod, None)
            self.drop_link(worker)
            self._wake.set()
        return won

    def can_reuse(self, worker: Worker) -> bool:
        """Whether ``worker`` may take another job: reuse is on and the worker has
        jobs left."""
        return (
            self.settings.reuse == "tenant"
            and worker.jobs < self.settings.max_jobs_per_worker
            and worker.state is WorkerState.BUSY
            and not self._stopping
        )

    async def reuse(self, worker: Worker, tenant: TenantName) -> None:
        """The worker's job succeeded and its slot is clear: it waits, hot, for the
        next job of ``tenant``, once the backend has released its claim (a fenced
        write on Kubernetes). If that fails, the worker is recycled instead."""
        released = False
        if worker.job is not None:
            try:
                released = await self.backend.release_claim(
                    worker.pod, job=worker.job, tenant=tenant, jobs=worker.jobs)
            except BackendUnavailable as e:
                log.warning("could not hand a worker back for reuse; recycling it",
                            pod=worker.pod, error=str(e))
        if worker.state is not WorkerState.BUSY:  # gone meanwhile
            return
        if not released:
            await self._retire(worker)
            return
        worker.state = WorkerState.IDLE
        worker.tenant = tenant
        worker.job = None
        worker.lost = None
        worker.settling = False
        worker.ready_at = time.monotonic()
        self._idle_changed.set()
        self.on_ready(worker)
        self._export()

    def retire_hot(self, keep: Callable[[TenantName], bool]) -> int:
        """At ``max_pods``, recycle hot idle workers whose tenant ``keep`` does not
        want, so a generic worker can take their place."""
        if len(self.workers) < self.settings.max_pods:
            return 0
        retired = 0
        for worker in list(self.workers.values()):
            if (worker.state is WorkerState.IDLE and worker.tenant is not None
                    and not keep(worker.tenant)):
                worker.state = WorkerState.DELETING
                self.chores.spawn(self._retire(worker), name=f"retire-{worker.pod}")
                retired += 1
        return retired

    async def recycle(self, worker: Worker) -> None:
        """The job is over: throw the worker away; the controller starts a fresh one."""
        await self._retire(worker)
