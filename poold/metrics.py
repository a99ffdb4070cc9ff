"""Prometheus metrics. Label values come from fixed sets, never from tenant input
(a tenant name is configuration, chosen by the operator, so it may label)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from poold.protocol import Usage

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)
RUN_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
CPU_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)
"""0.1 ms (a trivial module on a hot worker) to 10 min of CPU."""
MEMORY_BUCKETS = tuple(float(64 * 1024 * 4**i) for i in range(9))
"""64 KiB (one wasm page) to 4 GiB (wasm32's ceiling), in steps of 4."""
RSS_BUCKETS = tuple(float(2**20 * 2**i) for i in range(3, 13))
"""8 MiB to 4 GiB in steps of 2: a worker's resident memory starts at tens of MiB."""


class Metrics:
    """All of poold's metrics in one registry of its own (several daemons may share
    a test process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.pool_workers = Gauge(
            "poold_pool_workers", "Workers by state.", ["state"], registry=r
        )
        self.pool_target = Gauge(
            "poold_pool_target_workers", "Workers the pool is steering towards.", registry=r
        )
        self.pool_max = Gauge("poold_pool_max_workers", "pool.max_pods.", registry=r)
        self.pool_idle_target = Gauge(
            "poold_pool_idle_target_workers",
            'Idle workers the pool keeps: pool.min_idle, or the measured target of "auto".',
            registry=r,
        )
        self.pool_arrival_rate = Gauge(
            "poold_pool_arrival_rate_per_second",
            "Jobs submitted per second over the sizing windows (short 2 s, long 10 s).",
            ["window"], registry=r,
        )
        self.pool_creations = Counter(
            "poold_pool_worker_creations_total", "Workers the pool asked the backend for.",
            registry=r,
        )
        self.pool_retirements = Counter(
            "poold_pool_worker_retirements_total",
            "Idle workers the pool retired, by reason: surplus (beyond the idle target), "
            "idle_ttl, hot_idle_ttl.",
            ["reason"], registry=r,
        )
        self.pool_sizing_need = Gauge(
            "poold_pool_sizing_need_workers",
            'With "auto": arrivals expected while one worker starts (rate x start p90); '
            "the idle target adds the margin to it.",
            registry=r,
        )
        self.pool_sizing_margin = Gauge(
            "poold_pool_sizing_margin",
            'With "auto": standard deviations of the arrival count added to the need.',
            registry=r,
        )
        self.pool_start_p90 = Gauge(
            "poold_pool_sizing_start_seconds",
            "Quantile of the last 50 worker start times, as the idle target uses it.",
            ["quantile"], registry=r,
        )
        self.jobs_submitted = Counter(
            "poold_jobs_submitted_total", "Jobs accepted (202).", ["tenant"], registry=r
        )
        self.jobs_finished = Counter(
            "poold_jobs_finished_total", "Jobs by final state.", ["tenant", "state"], registry=r
        )
        self.starts = Counter(
            "poold_job_starts_total",
            "Job starts on a worker kept for the tenant (hot), an idle (warm) or a new (cold) one.",
            ["kind"], registry=r,
        )
        self.queue_wait = Histogram(
            "poold_queue_wait_seconds", "Submitted to assigned a worker.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.start_latency = Histogram(
            "poold_submit_to_start_seconds", "Submitted to the module's first instruction.",
            ["kind"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.run_time = Histogram(
            "poold_job_run_seconds", "Started to finished.", buckets=RUN_BUCKETS, registry=r
        )
        self.worker_start = Histogram(
            "poold_worker_start_seconds", "Worker created to ready.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.worker_failures = Counter(
            "poold_worker_failures_total", "Workers lost or replaced, by reason.",
            ["reason"], registry=r,
        )
        self.partitions_leased = Gauge(
            "poold_partitions_leased", "Kafka partitions leased to jobs.", registry=r
        )
        self.queued = Gauge("poold_jobs_queued", "Jobs waiting for a worker.", registry=r)
        self.uploads = Counter(
            "poold_module_uploads_total", "Module uploads accepted, by outcome.",
            ["outcome"], registry=r,
        )
        self.uploads_rejected = Counter(
            "poold_module_uploads_rejected_total", "Module uploads refused, by reason.",
            ["reason"], registry=r,
        )
        self.uploads_in_progress = Gauge(
            "poold_module_uploads_in_progress", "Module uploads being received or validated.",
            registry=r,
        )
        self.compiles = Counter(
            "poold_module_compiles_total",
            "Background compilations of uploaded modules (in a capped process), by outcome.",
            ["outcome"], registry=r,
        )
        self.compiles_queued = Gauge(
            "poold_module_compiles_queued", "Uploaded modules waiting to be compiled.",
            registry=r,
        )
        self.runtimes_removed = Counter(
            "poold_shared_runtime_removals_total",
            "Unused runtime entries removed from the shared volume's runtimes folder, by "
            "kind: folder, artifact, temporary.",
            ["kind"], registry=r,
        )
        self.runtimes_removed_bytes = Counter(
            "poold_shared_runtime_removed_bytes_total",
            "Bytes of the files in those entries.", registry=r,
        )
        self.http_errors = Counter(
            "poold_http_client_errors_total", "4xx answers, by status.", ["status"], registry=r
        )
        self.job_cpu = Histogram(
            "poold_job_cpu_seconds", "CPU time of each job's module run, by final state.",
            ["tenant", "state"], buckets=CPU_BUCKETS, registry=r,
        )
        self.job_memory = Histogram(
            "poold_job_memory_peak_bytes", "Each job's peak wasm linear memory.",
            ["tenant"], buckets=MEMORY_BUCKETS, registry=r,
        )
        self.job_rss = Histogram(
            "poold_job_rss_peak_bytes", "Each job's worker's peak resident memory.",
            ["tenant"], buckets=RSS_BUCKETS, registry=r,
        )
        self.job_fuel = Counter(
            "poold_job_fuel_consumed_total", "Fuel burnt by jobs that set limits.fuel.",
            ["tenant"], registry=r,
        )
        self.job_records = Counter(
            "poold_job_records_total", "Records fed to stdin (in) and produced from stdout (out).",
            ["tenant", "direction"], registry=r,
        )
        self.job_bytes = Counter(
            "poold_job_bytes_total",
            "Bytes fed to jobs' stdin and written by them to stdout, stderr and /out.",
            ["tenant", "stream"], registry=r,
        )

    def observe_usage(self, tenant: str, state: str, usage: Usage | None) -> None:
        """Count one terminal job's usage; figures that were not measured are skipped."""
        if usage is None:
            return
        if usage.cpu_ms is not None:
            self.job_cpu.labels(tenant, state).observe(usage.cpu_ms / 1000)
        if usage.memory_peak_bytes is not None:
            self.job_memory.labels(tenant).observe(usage.memory_peak_bytes)
        if usage.rss_peak_bytes is not None:
            self.job_rss.labels(tenant).observe(usage.rss_peak_bytes)
        if usage.fuel_consumed is not None:
            self.job_fuel.labels(tenant).inc(usage.fuel_consumed)
        for direction, records in (("in", usage.stdin_records), ("out", usage.stdout_records)):
            if records is not None:
                self.job_records.labels(tenant, direction).inc(records)
        for stream, size in (("stdin", usage.stdin_bytes), ("stdout", usage.stdout_bytes),
                             ("stderr", usage.stderr_bytes),
                             ("artifacts", usage.artifacts_bytes)):
            if size is not None:
                self.job_bytes.labels(tenant, stream).inc(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
