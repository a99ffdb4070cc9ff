"""The daemon: builds every part from the settings, runs them, stops them in order.

Long-lived tasks belong to one :class:`~poold.tasks.Supervisor`; if one dies
unexpectedly the daemon stops cleanly rather than limping on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from poold.agent.settings import agent_env
from poold.api.app import Api
from poold.api.guard import GuardedSite
from poold.backends.base import Backend
from poold.backends.kubernetes import KubernetesBackend
from poold.backends.leader import LeaseElector
from poold.backends.local import LocalBackend
from poold.backends.podtemplate import TemplateError, load_template
from poold.config import ConfigError, Settings, load_settings, memory_overcommit
from poold.data.embedded import EmbeddedBroker
from poold.data.kafka import DataPlane, topic_names
from poold.jobs.files import JobFiles
from poold.jobs.journal import JournalJobStore
from poold.metrics import Metrics
from poold.modules.compiler import Precompiler
from poold.modules.prune import RuntimePruner
from poold.modules.runtimes import install_runtimes, share_runtimes
from poold.modules.shared import SharedRuntimes
from poold.modules.store import ModuleStore
from poold.modules.structure import StructureLimits
from poold.retry import RetryPolicy
from poold.runtime.engine import CompileCache
from poold.sched.pool import Pool
from poold.sched.scheduler import Scheduler
from poold.sched.tuning import PoolOverrides, PoolTuner, TuningError, tuned
from poold.tasks import Supervisor
from poold.timestamps import utcnow

log = structlog.get_logger(__name__)


class Daemon:
    """Start with :meth:`start`, stop with :meth:`stop` (both safe to call twice)."""

    def __init__(self, settings: Settings, *, kube_configuration: Any = None,
                 config_path: Path | None = None) -> None:
        """``kube_configuration`` overrides how the Kubernetes backend connects (tests
        point it at a fake API server). ``config_path`` is the file ``settings`` came
        from, read again on :attr:`reload_requested` (SIGHUP)."""
        self.settings = settings
        self.config_path = config_path
        self.reload_requested = asyncio.Event()
        """Set (by SIGHUP) to re-read the config file's ``[pool]`` section."""
        self.tuner: PoolTuner | None = None
        self._kube_configuration = kube_configuration
        self.metrics = Metrics()
        self.broker: EmbeddedBroker | None = None
        self.data: DataPlane | None = None
        self.pool: Pool | None = None
        self.scheduler: Scheduler | None = None
        self.store = JournalJobStore(
            settings.state.dir / "jobs.journal", fsync=settings.state.fsync
        )
        self.modules: ModuleStore | None = None
        self.backend: Backend | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.tasks = Supervisor("daemon")
        """The scheduler, retention, config reloads, leader election, activation."""
        self._ready = False
        self.elector: LeaseElector | None = None
        self.active = asyncio.Event()
        """Set once this daemon manages workers (at once, or when it leads)."""
        self.draining = False
        self.api: Api | None = None
        self.files: JobFiles | None = None
        self.shared: SharedRuntimes | None = None
        """Kubernetes backend with runtimes: their publication to the shared volume."""
        self.pruner: RuntimePruner | None = None
        """Kubernetes backend: removes unused runtimes from the shared volume."""

    async def start(self) -> None:
        s = self.settings
        for path in (s.slots.root, s.state.dir, s.cache_dir):
            path.mkdir(parents=True, exist_ok=True)
        bootstrap = s.kafka.bootstrap
        if bootstrap == "embedded":
            self.broker = EmbeddedBroker(port=s.kafka.embedded_port)
            await self.broker.start()
            bootstrap = self.broker.bootstrap
        self.data = DataPlane(
            bootstrap, replication_factor=s.kafka.replication_factor,
            request_timeout_s=s.kafka.request_timeout_s,
            retry=RetryPolicy.of(s.retry, attempts=s.kafka.retries),
        )
        await self.data.start()
        topics = [t for name in s.tenants for t in topic_names(s.kafka.topic_prefix, name)]
        if topics:
            await self.data.ensure_topics(topics, partitions=s.kafka.partitions)

        self.modules = ModuleStore(
            s.state.dir / "modules",
            precompiler=Precompiler(cache=CompileCache(s.cache_dir), settings=s.modules,
                                    metrics=self.metrics),
            max_bytes=s.server.max_upload_mb * 1024 * 1024,
            structure=StructureLimits.from_settings(s.modules),
        )
        await self.modules.start()
        runtimes = await asyncio.to_thread(install_runtimes, s, self.modules)
        if s.pool.backend == "kubernetes" and runtimes:
            # runner pods read the runtimes from the shared volume (poold/modules/shared.py)
            self.shared = share_runtimes(
                runtimes, settings=s, store=self.modules, cache=CompileCache(s.cache_dir))
            self.tasks.run(self.shared.run, name="runtime-publisher", finishable=True)
        if s.pool.backend == "kubernetes":
            # with or without [runtimes.*]: what an earlier config published goes too
            self.pruner = RuntimePruner(
                slots_root=s.slots.root, retention_s=s.kubernetes.runtimes_retention_s,
                shared=self.shared, metrics=self.metrics)
            self.tasks.run(self.pruner.run, name="runtime-pruner")
        files = self.files = JobFiles(s.state.dir / "jobs", fsync=s.state.fsync)
        self.backend = self._backend(bootstrap)
        if isinstance(self.backend, KubernetesBackend):
            await self.backend.prepare()
        overrides = PoolOverrides(s.state.dir, fsync=s.state.fsync)  # PUT /v1/pool
        self.pool = Pool(
            backend=self.backend, settings=tuned(s.pool, overrides.load()),
            slots_root=s.slots.root, metrics=self.metrics,
        )
        self.tuner = PoolTuner(pool=self.pool, file=s.pool, overrides=overrides)
        self.scheduler = Scheduler(
            settings=s, store=self.store, pool=self.pool, data=self.data, modules=self.modules,
            files=files, metrics=self.metrics, runtimes=runtimes, runtime_folders=self.shared,
        )
        self.elector = self._elector()
        if self.elector is None:
            await self._activate()
        self._start_tasks()

        api = Api(
            settings=s, store=self.store, scheduler=self.scheduler, pool=self.pool,
            tuner=self.tuner, modules=self.modules, data=self.data, files=files,
            metrics=self.metrics,
            runtimes=runtimes, ready=lambda: self._ready,
            accepting=lambda: not self.draining,
        )
        self.api = api
        self._runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = GuardedSite(self._runner, s.server.host, s.server.port,
                           header_timeout_s=s.server.header_timeout_s)
        await site.start()
        port = site.port
        self.url = f"http://{s.server.host}:{port}"
        overcommit = memory_overcommit(
            s, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        if overcommit is not None:
            log.warning("worker memory may exceed the machine's", detail=overcommit)
        log.info("poold is serving", url=self.url, backend=s.pool.backend,
                 kafka=bootstrap, min_idle=self.pool.settings.min_idle,
                 max_pods=self.pool.settings.max_pods)

    def _backend(self, bootstrap: str) -> Backend:
        s = self.settings
        if s.pool.backend == "local":
            return LocalBackend(
                slots_root=s.slots.root.resolve(),
                agent_env=agent_env(s, kafka=bootstrap, cache=s.cache_dir.resolve(),
                                    host="127.0.0.1", port=0),
            )
        try:
            return KubernetesBackend(
                settings=s.kubernetes, template=load_template(s.kubernetes.pod_template),
                kafka=bootstrap, configuration=self._kube_configuration,
                agent_env=agent_env(s, kafka=bootstrap), retry=s.retry,
                runtimes=s.kubernetes.runtimes_mount_path if s.runtimes else None,
            )
        except TemplateError as e:
            raise ConfigError(str(e)) from e

    def _elector(self) -> LeaseElector | None:
        k = self.settings.kubernetes
        if self.settings.pool.backend != "kubernetes" or not k.leader_election:
            return None
        assert isinstance(self.backend, KubernetesBackend)
        return LeaseElector(
            configuration=self.backend.configuration, namespace=self.backend.namespace,
            name=k.lease_name, duration_s=k.lease_duration_s, call_timeout_s=k.api_timeout_s,
        )

    async def _activate(self) -> None:
        """Start managing workers and jobs: at once, or once this replica leads.
        The journal is replayed here, not earlier: a follower must not act on it."""
        assert self.pool is not None
        assert self.scheduler is not None
        if self.elector is not None:
            log.info("waiting to lead before managing pods",
                     lease=self.settings.kubernetes.lease_name)
            await self.elector.leading.wait()
        jobs = await asyncio.to_thread(self.store.open)
        await self.scheduler.start()
        await self.scheduler.recover(jobs)
        await self.pool.start()
        await self.scheduler.resume()
        self.active.set()
        self._ready = True

    def _start_tasks(self) -> None:
        """Any of these failing stops the daemon (:attr:`Supervisor.failed`): a lost
        lease, a scheduler that died, an activation that could not finish."""
        assert self.scheduler is not None
        self.tasks.run(self.scheduler.run, name="scheduler")
        self.tasks.run(self._sweep, name="retention")
        self.tasks.run(self._reloads, name="config-reload")
        if self.elector is not None:
            self.tasks.run(self.elector.run, name="leader-election")
            self.tasks.run(self._activate, name="activation", finishable=True)

    async def _reloads(self) -> None:
        """Re-read the config file whenever :attr:`reload_requested` is set (SIGHUP)."""
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            await self.reload_config()

    async def reload_config(self) -> bool:
        """Apply the config file's ``[pool]`` section as it is now (the keys
        ``PUT /v1/pool`` may change; see :mod:`poold.sched.tuning` for what wins over
        ``pool.json``). A file that cannot be read or validated changes nothing. Ends
        with one line, ``config re-read`` or ``config not re-read``."""
        path = self.config_path
        if path is None:
            log.warning("config not re-read", path=None,
                        error="poold serve was started without --config: there is no file "
                              "to read; use PUT /v1/pool to change the pool")
            return False
        assert self.tuner is not None
        try:
            read = await asyncio.to_thread(load_settings, path)
            outcome = await self.tuner.reload(read.pool)
        except (ConfigError, TuningError) as e:
            log.error("config not re-read", path=str(path), error=str(e),  # noqa: TRY400
                      keeps="the settings it runs with")
            return False
        for key, (running, wanted) in outcome.needs_restart.items():
            log.warning("config key changed in the file needs a restart; keeping its "
                        "running value", key=f"pool.{key}", running=running, file=wanted)
        for key in _changed_keys(self.settings.model_dump(exclude={"pool"}),
                                 read.model_dump(exclude={"pool"})):
            log.warning("config key changed in the file needs a restart; keeping its "
                        "running value", key=key)  # values left out: tokens' hashes live here
        for key, (saved, wanted) in outcome.replaced.items():
            log.info("the file's edit replaces a value set by PUT /v1/pool", key=f"pool.{key}",
                     pool_json=saved, file=wanted)
        log.info("config re-read", path=str(path),
                 changed={f"pool.{k}": {"was": a, "now": b}
                          for k, (a, b) in outcome.changed.items()},
                 kept_from_pool_json=outcome.overrides)
        return True

    async def _sweep(self) -> None:
        """Retention: remove finished jobs past ``retention.finished_jobs_s``."""
        while True:
            await asyncio.sleep(self.settings.retention.sweep_interval_s)
            if self.active.is_set():
                await self.expire_finished()

    async def expire_finished(self) -> int:
        """Remove every finished job older than the retention, everywhere it is kept."""
        retention = self.settings.retention
        cutoff = utcnow() - timedelta(seconds=retention.finished_jobs_s)
        expired = self.store.older_than(cutoff)
        seen = {j.id for j in expired}
        expired += [j for j in self.store.finished_beyond(retention.max_finished_jobs)
                    if j.id not in seen]
        self.store.forget_tombstones(retention.finished_jobs_s)
        for job in expired:
            assert self.files is not None
            await asyncio.to_thread(self.files.remove, job.id)
            await self.store.expire(job)
        if expired:
            log.info("expired finished jobs", count=len(expired))
        return len(expired)

    async def drain(self) -> None:
        """SIGTERM: refuse new work (503), let running jobs finish within
        ``server.drain_timeout_s``, then stop; queued jobs wait in the journal."""
        self.draining = True
        self._ready = False
        deadline = self.settings.server.drain_timeout_s
        scheduler = self.scheduler
        if scheduler is None or not scheduler.running:
            return
        log.info("draining", running=len(scheduler.running), deadline_s=deadline)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                await scheduler.idle()
        if scheduler.running:
            log.warning("drain deadline passed; stopping with jobs still running",
                        running=len(scheduler.running))

    async def stop(self) -> None:
        self._ready = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.tasks.stop()
        if self.pool is not None:
            # local workers die with the daemon; runner pods stay to be adopted
            await self.pool.stop(delete_workers=self.settings.pool.backend == "local")
            self.pool = None
        if self.elector is not None:
            await self.elector.release()
        if self.modules is not None:
            await self.modules.stop()
        self.store.close()
        if self.data is not None:
            await self.data.stop()
            self.data = None
        if self.broker is not None:
            await self.broker.stop()
            self.broker = None

    async def __aenter__(self) -> Daemon:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
                  ) -> list[str]:
    """Dotted keys whose values differ between two nested settings dumps."""
    keys: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


async def serve(settings: Settings, *, config_path: Path | None = None) -> None:
    """Run until SIGTERM/SIGINT (which only set an event) or until a task dies.
    SIGHUP (which only sets an event too) re-reads ``config_path``'s ``[pool]``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = Daemon(settings, config_path=config_path)
    # before the start: SIGHUP's default action would end the process
    loop.add_signal_handler(signal.SIGHUP, daemon.reload_requested.set)
    async with daemon:
        waiters = {asyncio.create_task(stop.wait()),
                   asyncio.create_task(daemon.tasks.failed.wait())}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        log.info("poold is stopping")
        if not daemon.tasks.failed.is_set():  # a dead task (a lost lease too): no drain
            await daemon.drain()
