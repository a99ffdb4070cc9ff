"""A job's way from the queue to a result: where a job gets a worker.

The dispatcher hands each queued job (fairly, within tenant quotas) to an
idle worker. Then, per job: fence the claim, lease a partition, write the
input records to Kafka, deliver module and ``job.json`` to the slot, nudge
the agent and follow its events, and when the result is committed, keep
the log and artifacts, write the terminal record, and recycle the worker.
Every state change is written to the job store before it is acted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import structlog

from poold.atomic import place_atomic, write_atomic
from poold.config import Settings
from poold.data.kafka import DataUnavailable, topic_names
from poold.data.leases import PartitionLeases
from poold.errors import SchedulerError
from poold.faults import crash_point
from poold.jobs.files import JobFiles
from poold.jobs.model import Job, JobState, OffsetRange
from poold.jobs.store import JobStore
from poold.metrics import Metrics
from poold.modules.shared import folder_mounts
from poold.protocol import JobDocument, PartitionRef, ResultDocument, Unsupported
from poold.runtime.runner import CANCELLED_BEFORE_START
from poold.sched.agent_link import AgentLink, Link
from poold.sched.pool import Pool, Worker, WorkerState
from poold.sched.queue import FairQueue
from poold.sched.running import (
    CancelExpired,
    Disposal,
    Outcome,
    Reported,
    RunningJob,
    TimedOut,
    WorkerLost,
)
from poold.slots import Slot, read_json, write_json_atomic
from poold.tasks import Supervisor
from poold.timestamps import utcnow
from poold.types import JobId, ModuleHash, TenantName

log = structlog.get_logger(__name__)

RESULT_GRACE_S = 10.0
"""Beyond a job's own time limit, how long poold waits for the agent's result
before it gives up on the worker (a module blocked in a host call cannot be
interrupted by the epoch)."""
CANCEL_GRACE_S = 3.0


class QueueFull(SchedulerError):
    """A tenant's queue is full; it drains as jobs start."""

    retriable = True


class ModulePaths(Protocol):
    """What the scheduler needs of the module store (:class:`ModuleStore`)."""

    def path(self, sha256: ModuleHash) -> Path: ...


class RuntimeGate(Protocol):
    """Whether a runtime's job may take a worker (:class:`poold.modules.runtimes.Runtimes`):
    not before its interpreter is compiled in the engine flavour the job needs, so
    that no worker ever compiles one (minutes, gigabytes, outside the job's limits)."""

    def ready(self, name: str, *, fuel: bool) -> bool: ...

    def refusal(self, name: str, *, fuel: bool) -> str | None: ...

    def on_change(self, callback: Callable[[], None]) -> None: ...
class RuntimeFolders(Protocol):
    """Where runner pods find the runtimes (:class:`poold.modules.shared.SharedRuntimes`)."""

    def folder(self, name: str) -> str | None: ...


class JobData(Protocol):
    """What the scheduler needs of the data plane (:class:`poold.data.kafka.DataPlane`)."""

    async def produce(
        self, topic: str, partition: int, records: Sequence[bytes], *, key: bytes | None = None
    ) -> tuple[int, int]: ...

    async def end_offset(self, topic: str, partition: int) -> int: ...

    def note_end(self, topic: str, partition: int, end: int | None) -> None: ...


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


LinkFactory = Callable[[Worker], Link]


class Scheduler:
    def __init__(
        self,
        *,
        settings: Settings,
        store: JobStore,
        pool: Pool,
        data: JobData,
        modules: ModulePaths,
        files: JobFiles,
        metrics: Metrics,
        connect: LinkFactory | None = None,
        runtimes: RuntimeGate | None = None,
        runtime_folders: RuntimeFolders | None = None,
    ) -> None:
        """``runtime_folders``: on the Kubernetes backend, the runtimes published to the
        shared volume; a runtime's job then names its files there instead of having
        the interpreter delivered into the slot. None: host paths (local backend)."""
        self.settings = settings
        self.store = store
        self.pool = pool
        self.data = data
        self.modules = modules
        self.files = files
        self.metrics = metrics
        self.runtime_folders = runtime_folders
        self.queue = FairQueue()
        self.leases = PartitionLeases(settings.kafka.partitions)
        self.running: dict[JobId, RunningJob] = {}
        """Every job from the moment it leaves the queue until it is released."""
        self._active: dict[TenantName, int] = {}
        """Running jobs per tenant (their quota slots): changed only by
        :meth:`_admit` and :meth:`_release`."""
        self._queued_inputs: dict[JobId, list[bytes]] = {}
        """Input records of queued jobs, kept since submission to save a disk read."""
        self.runtimes = runtimes
        self.parked: dict[JobId, TenantName] = {}
        """Queued runtime jobs whose interpreter is not compiled yet in the flavour they
        need: out of the fair queue (they take no worker and hold no other job back)
        until :attr:`runtimes` says it is ready, or that it never will be."""
        self._gate_changed = False
        if runtimes is not None:
            runtimes.on_change(self._on_gate_change)
        self._connect = connect or self._agent_link
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self.jobs = Supervisor("scheduler")
        """One task per job on a worker (or being recovered)."""
        self._http: aiohttp.ClientSession | None = None
        self._recovering: dict[JobId, Job] = {}
        """Unfinished jobs found at start-up, until their fate is decided."""
        self._delivered: dict[JobId, bool] = {}
        """For those: whether their ``job.json`` reached the slot (it may have run)."""
        pool.demand = lambda: self.queue.demand(self._room)
        pool.on_ready = self._on_ready
        pool.on_orphan = self._on_orphan

    def _agent_link(self, worker: Worker) -> Link:
        assert self._http is not None
        assert worker.endpoint is not None
        return AgentLink(self._http, worker.endpoint, token=worker.token)

    def _on_ready(self, worker: Worker) -> None:
        if (worker.link is None and self._http is not None and not self._http.closed
                and worker.endpoint is not None):
            worker.link = self._connect(worker)
        self._wake.set()

    def _on_gate_change(self) -> None:
        self._gate_changed = True
        self._wake.set()

    def _room(self, tenant: TenantName) -> int:
        quota = self.settings.tenants[tenant].max_concurrent_jobs
        return quota - self._active.get(tenant, 0)

    @property
    def active(self) -> dict[TenantName, int]:
        """Running jobs per tenant (read-only view for figures and tests)."""
        return dict(self._active)

    # -- public ----------------------------------------------------------------

    async def submit(self, job: Job, records: list[bytes]) -> Job:
        tenant = self.settings.tenants[job.tenant]
        if self._waiting(job.tenant) >= tenant.max_queued_jobs:
            raise QueueFull(
                f"tenant {job.tenant} already has {tenant.max_queued_jobs} jobs waiting "
                "(tenants.*.max_queued_jobs); retry later"
            )
        if records:
            await asyncio.to_thread(self.files.save_input, job.id, records)
        await self.store.put(job)
        crash_point("accepted")
        self._queued_inputs[job.id] = records
        self._enqueue(job)
        self.metrics.jobs_submitted.labels(job.tenant).inc()
        self.pool.arrived()
        # dispatch from here, not via the dispatcher's task: one task switch
        # fewer between the 202 and the job's start
        self._dispatch()
        return job

    async def cancel(self, job: Job) -> Job:
        if job.state is JobState.QUEUED and (
                self.queue.remove(job.tenant, job.id)
                or self.parked.pop(job.id, None) is not None):
            self._queued_inputs.pop(job.id, None)
            return await self._finish(job, JobState.CANCELLED, error=CANCELLED_BEFORE_START)
        run = self.running.get(job.id)
        if run is not None:
            run.cancel.set()
            current = self.store.get(job.id) or job
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_GRACE_S + 2):
                    while not current.state.terminal:
                        current = await self.store.wait_change(job.id, current)
            return current
        return self.store.get(job.id) or job

    async def output_ends(self, job: Job) -> AsyncIterator[int]:
        """The ends of a job's output range as they become known; the last is final.

        While the job runs here, each end is one its agent reported after Kafka
        acknowledged the records before it, so a reader of ``[start, end)``
        finds them all there and never waits in a fetch. Otherwise the
        terminal record is the truth.
        """
        run = self.running.get(job.id)
        seen: int | None = None
        while run is not None and not run.released:
            if run.output_end is not None and run.output_end != seen:
                seen = run.output_end
                yield seen
                continue  # it may have moved (or ended) while the caller read
            if run.done:
                if run.final_end is not None:
                    return
                break
            await run.progressed(seen)
        while not job.state.terminal:
            job = await self.store.wait_change(job.id, job)
        if job.output is not None:
            end = job.output.end if job.output.end is not None else job.output.start
            if end != seen:
                yield end

    def output_so_far(self, job: Job) -> int | None:
        """The acknowledged end of a running job's output (None: nothing known yet)."""
        run = self.running.get(job.id)
        return run.output_end if run is not None else None

    # -- recovery --------------------------------------------------------------

    async def recover(self, jobs: list[Job]) -> None:
        """Take the unfinished jobs of a previous run. Runs before the pool starts:
        workers found holding them can then be followed instead of deleted, and
        the slots (which the pool removes once their worker is gone) still tell
        whether a job's delivery was committed or its result written."""
        for job in jobs:
            if job.state.terminal:
                continue
            if job.state is not JobState.QUEUED and job.pod is not None:
                slot = Slot.of(self.settings.slots.root, job.pod)
                result = self._read_result(slot)
                if result is not None:
                    await self._complete(job, None, slot, Reported(result))
                    self.files.drop_input(job.id)
                    continue
                # Requeue only on proof that job.json never reached the slot: the
                # slot is there without it. A running job, or a slot already gone
                # with its worker, may have run: it must not run again.
                self._delivered[job.id] = job.state is JobState.RUNNING or (
                    job.delivering and (slot.job_json.exists() or not slot.dir.exists())
                )
            self._recovering[job.id] = job

    def _on_orphan(self, worker: Worker) -> bool:
        """A worker found holding a job: follow it if the job is ours to finish and the
        journal recorded this very worker for it (a claim whose answer was lost can
        leave a second worker naming the job; that one is an orphan to delete)."""
        job = self._recovering.get(worker.job) if worker.job else None
        if job is None or job.state is JobState.QUEUED or job.pod != worker.pod:
            return False
        del self._recovering[job.id]
        log.info("following a job started before the restart", job_id=job.id, pod=worker.pod)
        worker.lost = asyncio.get_running_loop().create_future()
        if self._http is not None and worker.endpoint is not None:
            worker.link = self._connect(worker)
        run = self._admit(job.id, job.tenant, worker, records=None)
        if job.output is not None:
            self.leases.take(job.tenant, job.output.partition)
            run.partition = job.output.partition
        self._spawn(self._reattach(job, run), f"job-{job.id}")
        return True

    async def resume(self) -> None:
        """After the pool has adopted what it found: queue again what never started,
        end what may have started on a worker that is gone."""
        pending = sorted(self._recovering.values(), key=lambda j: j.submitted_at)
        self._recovering.clear()
        requeued = failed = 0
        for job in pending:
            if job.state is JobState.QUEUED:
                self._enqueue(job)
                requeued += 1
                continue
            if not self._delivered.pop(job.id, True) and job.attempts < 2:
                again = job.evolve(
                    state=JobState.QUEUED, pod=None, warm=None, assigned_at=None,
                    input=None, output=None, delivering=False)
                await self.store.put(again)
                self._enqueue(again)
                requeued += 1
            else:
                failed += 1
                await self._finish(
                    job, JobState.ERROR,
                    error="poold restarted while the job was on a worker that is now gone; "
                    "the module may have started, so it was not run again (submit it anew)",
                )
        if pending:
            log.info("recovered jobs", requeued=requeued, ended=failed,
                     parked=len(self.parked), total=len(pending))
        await self._settle_parked()
        self._wake.set()
        self.pool.poke()

    async def _reattach(self, job: Job, run: RunningJob) -> None:
        structlog.contextvars.bind_contextvars(job_id=job.id, pod=run.worker.pod, tenant=job.tenant)
        disposal = Disposal.RECYCLE
        try:
            slot = Slot.of(self.settings.slots.root, run.worker.pod)
            outcome = await self._follow(job, run, slot)
            job = await self._complete(job, run, slot, outcome)
        except asyncio.CancelledError:
            disposal = Disposal.KEEP
            raise
        except Exception as e:
            log.exception("following a recovered job failed")
            job = await self._fail_inside(job, e)
        finally:
            await self._release(run, job, disposal)

    # -- dispatcher ------------------------------------------------------------

    async def idle(self) -> None:
        """Return once no job is on a worker (for draining)."""
        while self.running:
            self._idle = asyncio.Event()
            await self._idle.wait()

    async def start(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=None)
            )

    def _spawn(self, coro: Any, name: str) -> None:
        self.jobs.spawn(coro, name=name)

    async def run(self) -> None:
        await self.start()
        assert self._http is not None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._gate_changed:
                    await self._settle_parked()
                self._dispatch()
        finally:
            await self.jobs.stop(ordered=False)
            await self._http.close()

    def _dispatch(self) -> None:
        while True:
            if self.pool.count(WorkerState.IDLE) == 0:
                break
            picked = self.queue.pop(lambda t: self._room(t) > 0 and self.pool.has_idle_for(t))
            if picked is None:
                break
            tenant, job_id = picked
            if self._park_if_waiting(tenant, job_id):
                continue
            worker = self.pool.take_idle(tenant)
            if worker is None:  # pragma: no cover - checked above
                self.queue.push_front(tenant, job_id)
                break
            # running from the moment it leaves the queue, so a cancel can always find it
            run = self._admit(job_id, tenant, worker, self._queued_inputs.pop(job_id, None))
            self._spawn(self._run_job(run), f"job-{job_id}")
        if len(self.queue):
            # jobs wait while workers idle hot for other tenants: at max_pods, let
            # those go so generic workers can take their place
            self.pool.retire_hot(keep=lambda t: self.queue.size(t) > 0)
        self.metrics.queued.set(len(self.queue) + len(self.parked))
        self.pool.poke()

    # -- runtime jobs waiting for their interpreter's compilation -------------------

    def _waiting(self, tenant: TenantName) -> int:
        """The tenant's jobs waiting to start, in the queue or parked."""
        return self.queue.size(tenant) + sum(1 for t in self.parked.values() if t == tenant)

    def _enqueue(self, job: Job) -> None:
        """Into the fair queue, or parked while its runtime is not ready. No await
        between the check and the parking: a compilation that ends meanwhile is
        seen by :meth:`_settle_parked`."""
        if not self._park_if_waiting(job.tenant, job.id, job):
            self.queue.push(job.tenant, job.id)

    def _park_if_waiting(self, tenant: TenantName, job_id: JobId, job: Job | None = None) -> bool:
        """Park the job (True) if it names a runtime whose flavour it needs cannot
        run yet; one that never will is ended by :meth:`_settle_parked`."""
        if self.runtimes is None:
            return False
        job = job or self.store.get(job_id)
        if job is None or job.runtime is None:
            return False
        fuel = job.limits.fuel is not None
        if self.runtimes.ready(job.runtime, fuel=fuel):
            return False
        self.parked[job_id] = tenant
        if self.runtimes.refusal(job.runtime, fuel=fuel) is not None:
            self._on_gate_change()  # ended by the dispatcher's next turn
        else:
            log.info("job waits for its runtime's compilation", job_id=job_id, tenant=tenant,
                     runtime=job.runtime, flavour="fuel" if fuel else "plain")
        return True

    async def _settle_parked(self) -> None:
        """Back into the queue, in their turn, the parked jobs whose runtime is ready;
        end with the reason those whose runtime cannot run (its compilation failed):
        an accepted job never just waits forever."""
        self._gate_changed = False
        if self.runtimes is None:
            return
        for job_id, tenant in list(self.parked.items()):
            job = self.store.get(job_id)
            if job is None or job.state is not JobState.QUEUED or job.runtime is None:
                self.parked.pop(job_id, None)
                continue
            fuel = job.limits.fuel is not None
            if self.runtimes.ready(job.runtime, fuel=fuel):
                del self.parked[job_id]
                self.queue.insert(tenant, job_id, before=self._submitted_after(job))
                continue
            refused = self.runtimes.refusal(job.runtime, fuel=fuel)
            if refused is not None:
                del self.parked[job_id]
                self._queued_inputs.pop(job_id, None)
                await self._finish(job, JobState.ERROR, error=refused)
                self.files.drop_input(job_id)
        self._wake.set()

    def _submitted_after(self, job: Job) -> Callable[[JobId], bool]:
        def later(other: JobId) -> bool:
            found = self.store.get(other)
            return found is not None and found.submitted_at > job.submitted_at
        return later

    def _admit(
        self, job_id: JobId, tenant: TenantName, worker: Worker, records: list[bytes] | None
    ) -> RunningJob:
        """The one place a job takes a quota slot and becomes running."""
        run = RunningJob(job_id=job_id, tenant=tenant, worker=worker, records=records)
        self.running[job_id] = run
        self._active[tenant] = self._active.get(tenant, 0) + 1
        return run

    async def _release(self, run: RunningJob, job: Job, disposal: Disposal) -> None:
        """The one place a running job gives back its quota slot, partition and
        worker. A stopping daemon keeps the worker and the saved input: the
        next start settles the job."""
        assert not run.released, f"job {run.job_id} released twice"
        run.released = True
        self.running.pop(run.job_id, None)
        if not self.running:
            self._idle.set()
        self._active[run.tenant] -= 1
        run.records = None
        run.output_finished(None)  # wake anyone still following
        if run.partition is not None:
            _, out_topic = topic_names(self.settings.kafka.topic_prefix, run.tenant)
            # an end the agent never reported is unknown: strays may still land
            self.data.note_end(out_topic, run.partition, run.final_end)
            self.leases.release(run.tenant, run.partition)
            self.metrics.partitions_leased.set(self.leases.leased)
        structlog.contextvars.unbind_contextvars("job_id", "pod", "tenant")
        if disposal is Disposal.KEEP:
            return
        if disposal is Disposal.REUSE:
            link = run.worker.link
            if link is not None and not link.reusable:
                self.pool.drop_link(run.worker)  # a fresh line, rather than one with stray events
            await self.pool.reuse(run.worker, run.tenant)
        elif disposal is Disposal.RECYCLE:
            crash_point("recycling")
            self.pool.drop_link(run.worker)
            await self.pool.recycle(run.worker)
        if job.state.terminal:
            self.files.drop_input(job.id)
        self._wake.set()

    # -- one job ---------------------------------------------------------------

    async def _run_job(self, run: RunningJob) -> None:
        job = self.store.get(run.job_id)
        assert job is not None
        worker = run.worker
        structlog.contextvars.bind_contextvars(job_id=job.id, pod=worker.pod, tenant=job.tenant)
        disposal = Disposal.RECYCLE
        try:
            if not await self.pool.claim(worker, job.id):
                disposal = Disposal.FORGET
                if run.cancel.is_set():
                    job = await self._finish(
                        job, JobState.CANCELLED, error=CANCELLED_BEFORE_START)
                else:
                    # back in line, with its records; the next worker takes it
                    if run.records is not None:
                        self._queued_inputs[job.id] = run.records
                    self.queue.push_front(job.tenant, job.id)
                return
            run.partition = self.leases.acquire(job.tenant)
            self.metrics.partitions_leased.set(self.leases.leased)
            job = await self._execute(job, run)
            if job.runtime is not None and job.state is JobState.ERROR and self.runtimes:
                # a worker that found the interpreter's artifact unusable removed it (it
                # never compiles one): the compilation is queued now, not by the next job
                self.runtimes.ready(job.runtime, fuel=job.limits.fuel is not None)
            if (job.state is JobState.SUCCEEDED and not run.cancel.is_set()
                    and self.pool.can_reuse(worker)):
                # only after a success: any other end may have left the worker
                # in a state nobody should inherit (and a cancel sent as the job
                # ended may still be on its way to the agent)
                slot = Slot.of(self.settings.slots.root, worker.pod)
                await asyncio.to_thread(slot.clear)
                disposal = Disposal.REUSE
        except asyncio.CancelledError:
            disposal = Disposal.KEEP  # the job stays as recorded, for the next start to settle
            raise
        except Exception as e:
            log.exception("job failed inside poold")
            job = await self._fail_inside(job, e)
        finally:
            await self._release(run, job, disposal)

    async def _fail_inside(self, job: Job, error: Exception) -> Job:
        current = self.store.get(job.id) or job
        if current.state.terminal:
            return current
        return await self._finish(current, JobState.ERROR, error=f"poold failed the job: {error}")

    async def _execute(self, job: Job, run: RunningJob) -> Job:
        worker = run.worker
        partition = run.partition
        assert partition is not None
        in_topic, out_topic = topic_names(self.settings.kafka.topic_prefix, job.tenant)
        hot = worker.tenant is not None
        warm = hot or (
            worker.ready_at is not None and worker.ready_at <= _monotonic_of(job.submitted_at))
        how = "hot" if hot else "warm" if warm else "cold"
        assigned_at = utcnow()
        self.metrics.queue_wait.observe((assigned_at - job.submitted_at).total_seconds())
        records, run.records = run.records, None
        if records is None:
            records = await asyncio.to_thread(self.files.load_input, job.id)
        try:
            in_range: OffsetRange | None = None
            if records:
                start, end = await self.data.produce(
                    in_topic, partition, records, key=job.id.encode())
                in_range = OffsetRange(in_topic, partition, start, end)
            out_start = await self.data.end_offset(out_topic, partition)
        except DataUnavailable as e:
            return await self._finish(job, JobState.ERROR, error=f"Kafka is unavailable: {e}")
        # One write records the assignment and that delivery is under way: from
        # the moment job.json is committed the module may start, and a job that
        # may have started is never run again after a crash.
        job = job.evolve(
            state=JobState.ASSIGNED, pod=worker.pod, warm=warm, start=how,
            assigned_at=assigned_at,
            input=in_range, output=OffsetRange(out_topic, partition, out_start),
            delivering=True, attempts=job.attempts + 1,
        )
        await self.store.put(job)
        crash_point("assigned")

        document = JobDocument(
            job_id=job.id, sha256=job.module, size=job.module_size, args=list(job.args),
            env=[[k, v] for k, v in job.env], timeout_s=job.limits.timeout_s,
            memory_mb=job.limits.memory_mb, fuel=job.limits.fuel,
            input=PartitionRef(in_topic, partition, in_range.start, in_range.end or 0)
            if in_range else None,
            output=PartitionRef(out_topic, partition, out_start),
        )
        if job.runtime is not None:
            runtime = self.settings.runtimes.get(job.runtime)
            if runtime is None:
                return await self._finish(
                    job, JobState.ERROR, error=f"the runtime {job.runtime!r} is no longer "
                    "configured on this server; submit the job again")
            mounts = [[str(host), guest] for guest, host in runtime.mounts.items()]
            folder = None
            if self.runtime_folders is not None:
                folder = self.runtime_folders.folder(job.runtime)
                if folder is None:  # a backstop: such a job waits until it is ready
                    return await self._finish(
                        job, JobState.ERROR, error=f"the runtime {job.runtime!r} is not on "
                        "the shared volume yet (GET /v1/runtimes says when it is ready); "
                        "submit the job again then")
                mounts = [list(pair) for pair in folder_mounts(runtime.mounts)]
            document = dataclasses.replace(
                document, mounts=mounts,
                script=runtime.script_name if job.script is not None else None,
                runtime=job.runtime, runtime_dir=folder)
        slot = Slot.of(self.settings.slots.root, worker.pod)
        if run.cancel.is_set():
            return await self._finish(job, JobState.CANCELLED, error=CANCELLED_BEFORE_START)
        await self._deliver(slot, job, document)
        crash_point("delivered")
        if worker.link is None:
            worker.link = self._connect(worker)
        await worker.link.nudge()
        outcome = await self._follow(job, run, slot)
        return await self._complete(job, run, slot, outcome)

    async def _deliver(self, slot: Slot, job: Job, document: JobDocument) -> None:
        """Module first, ``job.json`` last: its rename is the commit point. A runtime
        on the shared volume (``runtime_dir``) is read from there: no 100 MB copy per job."""
        source = self.modules.path(job.module)
        fsync = self.settings.slots.fsync
        if document.script is not None and job.script is not None:
            slot.scripts.mkdir(exist_ok=True)
            write_atomic(slot.scripts / document.script, job.script.encode(), fsync=fsync)
        if document.runtime_dir is None and job.module_size > 4 * 1024 * 1024:
            await asyncio.to_thread(place_atomic, source, slot.module, fsync=fsync)
        elif document.runtime_dir is None:
            place_atomic(source, slot.module, fsync=fsync)
        write_json_atomic(slot.job_json, document.to_json(), fsync=fsync)

    async def _follow(self, job: Job, run: RunningJob, slot: Slot) -> Outcome:
        """How the wait for the agent's result ended. The event stream is the
        fast path; the slot stays the truth."""
        worker = run.worker
        assert worker.lost is not None
        lost: asyncio.Future[str] = worker.lost
        loop = asyncio.get_running_loop()
        source: asyncio.Task[ResultDocument | None] = asyncio.create_task(
            self._stream_events(job, run), name="agent-events"
        )
        cancel_wait: asyncio.Task[Any] = asyncio.create_task(run.cancel.wait())
        give_up_at: float | None = None
        try:
            while True:
                waiters: set[asyncio.Future[Any]] = {source, lost, cancel_wait}
                done, _ = await asyncio.wait(
                    waiters, timeout=0.5, return_when=asyncio.FIRST_COMPLETED
                )
                if source in done:
                    result = source.result()
                    if result is not None:
                        return Reported(result)
                    source = asyncio.create_task(self._poll_result(slot))
                else:
                    # the stream may be alive yet silent (a line opened after the
                    # agent finished and moved on): the slot is the truth
                    found = self._read_result(slot)
                    if found is not None and found.job_id == job.id:
                        return Reported(found)
                if lost.done():
                    found = self._read_result(slot)
                    return Reported(found) if found is not None else WorkerLost(lost.result())
                if cancel_wait in done:
                    give_up_at = loop.time() + CANCEL_GRACE_S
                    await self._agent_cancel(worker)
                    cancel_wait = asyncio.create_task(asyncio.Event().wait())
                if give_up_at is not None and loop.time() > give_up_at:
                    return CancelExpired()
                current = self.store.get(job.id) or job
                since = current.started_at or current.assigned_at or current.submitted_at
                if (utcnow() - since).total_seconds() > job.limits.timeout_s + RESULT_GRACE_S:
                    return TimedOut()
        finally:
            source.cancel()
            cancel_wait.cancel()

    async def _poll_result(self, slot: Slot) -> ResultDocument | None:
        while True:
            found = self._read_result(slot)
            if found is not None:
                return found
            await asyncio.sleep(self.settings.runtime.poll_interval_s)

    @staticmethod
    def _read_result(slot: Slot) -> ResultDocument | None:
        raw = read_json(slot.result_json)
        return _result(raw) if raw is not None else None

    async def _stream_events(self, job: Job, run: RunningJob) -> ResultDocument | None:
        worker = run.worker
        if worker.link is None:
            worker.link = self._connect(worker)
        try:
            async for event in worker.link.events():
                kind = event.get("type")
                if kind == "started":
                    self.pool.settled(worker)
                    await self._started(job.id, float(event["ts"]))
                elif kind == "output":
                    run.output_progress(int(event["end"]))
                elif kind == "stderr":
                    self.files.append_log(job.id, str(event["data"]).encode())
                elif kind == "finished":
                    return _result(event["result"])
        except (aiohttp.ClientError, OSError, json.JSONDecodeError) as e:
            log.warning("agent event stream broke; polling the slot", error=str(e))
        return None

    async def _agent_cancel(self, worker: Worker) -> None:
        if worker.link is not None:
            await worker.link.cancel()

    async def _started(self, job_id: JobId, ts: float) -> None:
        job = self.store.get(job_id)
        if job is None or job.state is not JobState.ASSIGNED:
            return
        job = job.evolve(state=JobState.RUNNING, started_at=_ts(ts))
        await self.store.put(job)
        crash_point("running")
        kind = job.start or ("warm" if job.warm else "cold")
        self.metrics.starts.labels(kind).inc()
        if job.wait_ms is not None:
            self.metrics.start_latency.labels(kind).observe(job.wait_ms / 1000)

    async def _complete(
        self, job: Job, run: RunningJob | None, slot: Slot, outcome: Outcome
    ) -> Job:
        job = self.store.get(job.id) or job
        match outcome:
            case Reported(result):
                pass
            case TimedOut():
                self.files.close_log(job.id, slot.stderr_log)
                return await self._finish(
                    job, JobState.TIMED_OUT,
                    error=f"the job ran past its time limit of {job.limits.timeout_s:g} s and "
                    "its worker did not stop it; the worker was deleted",
                )
            case CancelExpired():
                self.files.close_log(job.id, slot.stderr_log)
                return await self._finish(job, JobState.CANCELLED, error="cancelled")
            case WorkerLost(reason):
                self.files.close_log(job.id, slot.stderr_log)
                return await self._finish(
                    job, JobState.ERROR, error=f"the worker died: {reason}")
        output = job.output
        if output is not None:
            end = result.output_end if result.output_end is not None else output.start
            if run is not None:
                run.output_finished(end)  # followers read the rest while we finish up
            output = OffsetRange(output.topic, output.partition, output.start, end)
        limit = self.settings.runtime.max_artifacts_mb * 1024 * 1024
        artifacts, dropped = await asyncio.to_thread(
            self.files.collect, job.id, slot.artifacts, limit=limit,
            max_files=self.settings.runtime.max_artifact_files)
        self.files.close_log(job.id, slot.stderr_log)
        if job.started_at is None and result.started_at is not None:
            job = job.evolve(started_at=_ts(result.started_at))
            kind = "warm" if job.warm else "cold"
            self.metrics.starts.labels(kind).inc()
        job = job.evolve(output=output, artifacts=tuple(artifacts),
                         artifacts_dropped=tuple(dropped), usage=result.usage)
        crash_point("result")
        return await self._finish(
            job, JobState(result.state), error=result.error, exit_code=result.exit_code,
            finished=_ts(result.finished_at),
        )

    async def _finish(
        self,
        job: Job,
        state: JobState,
        *,
        error: str | None = None,
        exit_code: int | None = None,
        finished: datetime | None = None,
    ) -> Job:
        job = job.evolve(
            state=state, error=error, exit_code=exit_code, finished_at=finished or utcnow()
        )
        if job.output is not None and job.output.end is None:
            job = job.evolve(output=OffsetRange(
                job.output.topic, job.output.partition, job.output.start, job.output.start))
        await self.store.put(job)
        self.metrics.jobs_finished.labels(job.tenant, state.value).inc()
        if job.run_ms is not None:
            self.metrics.run_time.observe(job.run_ms / 1000)
        self.metrics.observe_usage(job.tenant, state.value, job.usage)
        log.info(
            "job finished", job_id=job.id, tenant=job.tenant, state=state.value,
            exit_code=exit_code, pod=job.pod, warm=job.warm, wait_ms=job.wait_ms,
            run_ms=job.run_ms, error=error,
            cpu_ms=job.usage.cpu_ms if job.usage else None,
            rss_peak_bytes=job.usage.rss_peak_bytes if job.usage else None,
        )
        return job


_MONO_OFFSET = time.time() - time.monotonic()


def _result(raw: dict[str, Any]) -> ResultDocument:
    """The worker's result; one this poold cannot read as its agent meant it (a newer
    agent's that requires what this poold lacks) ends the job ``error`` saying so."""
    try:
        return ResultDocument.from_json(raw)
    except Unsupported as e:
        log.warning("worker's result refused", error=str(e))
        return ResultDocument(
            job_id=e.job_id or "", state="error", exit_code=None, started_at=None,
            error=f"{e}; how the job ended is unknown (its output may be incomplete): "
                  "upgrade poold to its workers' version, then submit the job again",
            finished_at=time.time(), output_end=None, output_records=0)


def _monotonic_of(when: datetime) -> float:
    return when.timestamp() - _MONO_OFFSET
