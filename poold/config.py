"""poold's one settings object, read from a TOML file and ``POOLD_...`` variables.

Every field documents its unit and why its default is what it is; the TOML
files under ``config/`` repeat that documentation for operators. A bad value
stops start-up with :class:`ConfigError`, whose message names the key
(``pool.min_idle``) so the operator knows exactly what to fix.

Environment overrides use ``__`` between levels, so keys that contain single
underscores stay unambiguous: ``POOLD_POOL__MIN_IDLE=2``,
``POOLD_TENANTS__DEMO__TOKEN_SHA256=...``.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from poold.errors import Error
from poold.types import TenantName


class ConfigError(Error):
    """The configuration cannot be used; the message names the key and the fix."""


WORKER_OVERHEAD_MB = 256 + 128
"""A worker's own memory beyond its job's memory_mb: the agent's allowance (see
poold.agent.quotas.HOST_ALLOWANCE_MB) and what the process uses at rest."""
LINGER_S = 300.0
"""A finished agent that is not reused exits by itself after this long (the agent's
own default): poold deletes it long before."""


def memory_overcommit(settings: Settings, physical_bytes: int) -> str | None:
    """A sentence when every local worker at its largest could need more memory than
    the machine has; poold then starts anyway (jobs rarely all peak together, and
    each worker is capped, so the kernel never has to choose), but says so."""
    if settings.pool.backend != "local":
        return None  # each runner pod has its own memory limit (deploy/runner)
    need = settings.pool.max_pods * (settings.limits.max_memory_mb + WORKER_OVERHEAD_MB)
    have = physical_bytes // (1024 * 1024)
    if need <= have:
        return None
    return (
        f"pool.max_pods ({settings.pool.max_pods}) workers at limits.max_memory_mb "
        f"({settings.limits.max_memory_mb} MiB) plus about {WORKER_OVERHEAD_MB} MiB each "
        f"could need {need} MiB, more than this machine's {have} MiB; each worker is "
        "capped, but lower one of the keys if jobs may really use that much at once"
    )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _token_hash(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError("must be 64 lowercase hex characters (sha256 of the token)")
    return value


TokenHash = Annotated[str, AfterValidator(_token_hash)]
"""A bearer token is configured by its sha256 only (``poold token`` makes a pair)."""


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    """Address the HTTP API binds to. Loopback by default: exposing it is a choice."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    """TCP port of the HTTP API (0 picks a free one, for tests)."""
    admin_token_sha256: TokenHash | None = None
    """Hex sha256 of the administrator's bearer token (``PUT /v1/pool``); no
    tenant may have it. None: nobody may re-tune the pool at run time."""
    max_upload_mb: Annotated[int, Field(ge=1, le=4096)] = 128
    """Largest module accepted, in MiB. Interpreters compiled to WASI are tens of MB."""
    max_input_mb: Annotated[int, Field(ge=1, le=1024)] = 16
    """Largest JSON job submission (mostly input records), in MiB."""
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """A request head (request line and headers) must be complete within this many
    seconds of its first byte, else the connection is closed. Real clients send a
    head in milliseconds; a slowloris client trickles one to hold the socket."""
    idle_timeout_s: Annotated[float, Field(gt=0)] = 75.0
    """An open connection with no request in it (new, or kept alive after a
    response) is closed after this many seconds. Longer than clients keep idle
    connections (aiohttp 15 s, browsers up to 60 s), so a client never reuses one
    just as poold closes it; nginx uses 75 s too."""
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    """Longest pause while a request body (a module, a job) arrives, in seconds; the
    request then gets 408 and its connection is closed."""
    min_upload_rate_kib_s: Annotated[float, Field(ge=0)] = 64.0
    """Slowest average rate a request body may arrive at, in KiB/s, measured from the
    start of the body once ``body_timeout_s`` has passed (0 = no minimum). 64 KiB/s
    moves a 128 MiB module in 34 minutes; a client below it gets 408."""
    max_uploads: Annotated[int, Field(ge=1)] = 8
    """Module uploads in progress at once, all tenants together; beyond it 429.
    Each holds a temporary file and, while it is validated, a thread."""
    max_uploads_per_tenant: Annotated[int, Field(ge=1)] = 2
    """Module uploads in progress at once per tenant, so one tenant cannot take
    every upload slot; beyond it 429."""
    page_size: Annotated[int, Field(ge=1, le=1000)] = 50
    """Default number of jobs per page of ``GET /v1/jobs``."""
    max_page_kb: Annotated[int, Field(ge=1)] = 1024
    """Largest page of ``GET /v1/jobs``, in KiB of JSON: a page ends early (its ``next``
    link continues) rather than grow past it, whatever ``limit`` asks for. A page
    always holds at least one job."""
    drain_timeout_s: Annotated[float, Field(ge=0)] = 20.0
    """On SIGTERM, how long running jobs may take to finish before poold exits.
    Keep it below the pod's terminationGracePeriodSeconds (30 in deploy/)."""


def _min_idle(value: object) -> int | Literal["auto"]:
    """A whole number of workers (0 or more; a numeric string from the environment
    too) or ``"auto"``, with one message for anything else."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f'must be a whole number of workers (0 or more) or "auto", not {value!r}')


class PoolSettings(_Section):
    backend: Literal["local", "kubernetes"] = "local"
    """Where workers run: local agent processes, or runner pods on Kubernetes."""
    min_idle: Annotated[int | Literal["auto"], PlainValidator(_min_idle)] = 4
    """Idle, ready workers kept waiting. 0 makes every job start a worker (cold).
    ``"auto"``: a target computed from the measured arrival rate and worker start
    time (docs/pool-sizing.md), never below ``min_idle_floor``."""
    min_idle_floor: Annotated[int, Field(ge=0)] = 1
    """With ``min_idle = "auto"``: idle workers kept even with no arrivals, so the
    first job after a lull starts warm."""
    max_pods: Annotated[int, Field(ge=1)] = 16
    """Hard cap on workers in any state (starting, idle, busy, deleting)."""
    max_starting: Annotated[int, Field(ge=1)] = 8
    """Worker creations in flight at once, so a burst cannot storm the backend."""
    start_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """A worker not ready after this many seconds is deleted and replaced."""
    failure_backoff_s: Annotated[float, Field(ge=0)] = 0.5
    """First delay after a worker fails to start; doubles per failure in a row."""
    failure_backoff_max_s: Annotated[float, Field(ge=0)] = 30.0
    """Cap of that delay: a broken image slows creation down, never into a hot loop."""
    idle_ttl_s: Annotated[float, Field(ge=0)] = 0.0
    """Idle workers beyond the target (it dropped, or min_idle was lowered) are
    retired after this many seconds idle (+ up to 10 % jitter), longest idle
    first. With a fixed min_idle any idle worker is also recycled after it (0 =
    never); with ``"auto"`` only surplus ones, and 0 means 30 s."""
    reuse: Literal["never", "tenant"] = "never"
    """``never``: one job per worker, then a fresh one (the strictest isolation).
    ``tenant``: a worker whose job succeeded may take the next job of the same
    tenant ("hot"), with its slot cleared and a fresh runtime store; see the
    README's Isolation section for what that does and does not separate."""
    max_jobs_per_worker: Annotated[int, Field(ge=1)] = 100
    """With reuse: a worker is recycled after this many jobs (bounds what a
    runtime leak or fragmentation can build up)."""
    hot_idle_ttl_s: Annotated[float, Field(ge=0)] = 10.0
    """With reuse: a hot worker (bound to a tenant) idle this long is recycled,
    so capacity held for one tenant returns to all (0 = never)."""

    @property
    def agent_linger_s(self) -> float:
        """How long a worker's agent waits for another job after one before it exits
        by itself (its safety net should poold vanish): 300 s, and with reuse longer
        than poold keeps a hot worker (for ever when ``hot_idle_ttl_s`` is 0), so a
        hot worker is never lost to its own timer and counted as a failure."""
        if self.reuse == "never":
            return LINGER_S
        if self.hot_idle_ttl_s == 0:
            return math.inf
        return self.hot_idle_ttl_s + LINGER_S


    @model_validator(mode="after")
    def _consistent(self) -> PoolSettings:
        if self.min_idle != "auto" and self.min_idle > self.max_pods:
            raise ValueError(
                f"pool.min_idle ({self.min_idle}) exceeds pool.max_pods "
                f"({self.max_pods}); lower min_idle or raise max_pods"
            )
        if self.min_idle_floor > self.max_pods:
            raise ValueError(
                f"pool.min_idle_floor ({self.min_idle_floor}) exceeds pool.max_pods "
                f"({self.max_pods}); lower min_idle_floor or raise max_pods"
            )
        return self


class SlotSettings(_Section):
    root: Path = Path("/var/lib/poold/slots")
    """The shared volume holding ``<pod>/in`` and ``<pod>/out`` (NFS in a cluster)."""
    fsync: bool = True
    """fsync each delivered file before its rename. Needed on NFS, where a file
    must be on the server before another client may see it; on a local folder
    the agent reads the page cache directly and fsync only adds latency."""


class StateSettings(_Section):
    dir: Path = Path("/var/lib/poold/state")
    """poold's own disk: uploaded modules, compile cache, the job journal, job logs and
    artifacts. In a cluster, a volume both replicas can mount (the new leader
    replays the journal)."""
    fsync: bool = True
    """fsync the job journal before acting on a change. Without it a crash of poold
    still loses nothing (the kernel has the bytes); a crash of the machine may
    lose the last changes."""


class RetrySettings(_Section):
    """How a call that failed for a temporary reason (a dropped connection, a 5xx, a
    429, a timeout) waits before it is tried again (:mod:`poold.retry`): Kafka calls
    (``kafka.retries`` attempts), Kubernetes API calls (``kubernetes.api_retries``)
    and the pod watch's reconnects (no limit). Each pause is spread by +-50 %."""

    backoff_s: Annotated[float, Field(ge=0)] = 0.1
    """First pause, in seconds; doubles per failure in a row. Short: most temporary
    failures (a leader election in Kafka, a restarted API server) pass in a second."""
    backoff_max_s: Annotated[float, Field(ge=0)] = 5.0
    """Longest pause, in seconds, so a long outage is noticed again within it."""


class RetentionSettings(_Section):
    finished_jobs_s: Annotated[float, Field(gt=0)] = 7 * 24 * 3600.0
    """How long a finished job (record, log, artifacts) is kept, in seconds. Output
    records stay in Kafka under the topics' own retention."""
    max_finished_jobs: Annotated[int, Field(ge=1)] = 100_000
    """Finished jobs kept at most; beyond it the oldest expire early. This bounds
    the journal, poold's memory and its start-up replay (19 s for 100,000 jobs
    on a 2-core machine, measured in docs/architecture.md)."""
    sweep_interval_s: Annotated[float, Field(gt=0)] = 60.0
    """How often expired jobs are looked for."""


class KafkaSettings(_Section):
    bootstrap: str = "embedded"
    """``embedded`` starts a local broker with poold; otherwise ``host:port,host:port``."""
    embedded_port: Annotated[int, Field(ge=0, le=65535)] = 0
    """Port of the embedded broker (0 picks a free one)."""
    topic_prefix: str = "poold"
    """Topics are ``<prefix>.<tenant>.in`` and ``<prefix>.<tenant>.out``."""
    partitions: Annotated[int, Field(ge=1, le=10000)] = 16
    """Partitions per tenant topic; a job leases one of each, so this caps concurrency."""
    replication_factor: Annotated[int, Field(ge=1)] = 1
    """Replication of created topics (3 on a production Redpanda cluster)."""
    request_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """Deadline of one Kafka request; beyond it the broker counts as unavailable."""
    retries: Annotated[int, Field(ge=1, le=20)] = 3
    """Attempts for a Kafka call that failed for a temporary reason."""

    @field_validator("topic_prefix")
    @classmethod
    def _topic_chars(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", value):
            raise ValueError("use 1-100 characters from A-Z a-z 0-9 . _ -")
        return value


class RuntimeSettings(_Section):
    engine: Literal["wasmtime", "wasmedge"] = "wasmtime"
    """The WebAssembly runtime the agent uses."""
    cache_dir: Path | None = None
    """Compiled-module cache shared by all workers; default ``<state.dir>/cache``."""
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    """How often an idle agent looks for ``in/job.json`` when no nudge reaches it."""
    max_log_kb: Annotated[int, Field(ge=1)] = 8192
    """stderr kept per job, in KiB; beyond it the log is cut with a note."""
    max_artifacts_mb: Annotated[int, Field(ge=0)] = 256
    """Total size of files a job may write under ``/out``, in MiB. Held while the
    module writes: no file grows past it (the write fails with EFBIG) and a job
    found over it is stopped and ends ``failed`` (docs/limits.md)."""
    max_artifact_files: Annotated[int, Field(ge=0)] = 1000
    """Files and folders a job may make under ``/out``; over it, it is stopped and
    ends ``failed``. Each becomes an entry of the job record."""
    max_output_mb: Annotated[int, Field(ge=0)] = 1024
    """stdout a job may send to Kafka as output records, in MiB; over it, it is
    stopped and ends ``failed``."""
    max_output_records: Annotated[int, Field(ge=0)] = 1_000_000
    """Output records (stdout lines) a job may send to Kafka; over it, it is
    stopped and ends ``failed``."""


class ModuleSettings(_Section):
    """What an uploaded module may cost to compile. Compilation time and memory grow
    with these, not with the file size: 4 MB of empty functions took a minute and
    5 GB to compile. A module over a structural limit is refused at upload (400
    naming the key); one within them compiles in a separate process capped by
    ``compile_memory_mb`` and ``compile_timeout_s``, never inside poold."""

    max_functions: Annotated[int, Field(ge=1)] = 100_000
    """Functions a module may define. CPython for WASI defines about 12,000; 100,000
    empty functions take ~15 s and ~600 MB to compile on a 2-core machine."""
    max_code_mb: Annotated[int, Field(ge=1)] = 64
    """Size of a module's code section (all function bodies), in MiB."""
    max_function_kb: Annotated[int, Field(ge=1)] = 1024
    """Size of one function body, in KiB: compile time grows faster than linearly in it."""
    max_locals: Annotated[int, Field(ge=1)] = 10_000
    """Locals one function may declare; compilers rarely emit more than a few thousand."""
    compile_memory_mb: Annotated[int, Field(ge=64)] = 2048
    """Address-space cap of the process that compiles an uploaded module, in MiB."""
    compile_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    """Wall-clock cap of one background compilation; the compiler is killed after it.
    A 16 MB interpreter compiles in ~20 s."""
    compile_cache_mb: Annotated[int, Field(ge=1)] = 4096
    """Disk the compiled-module cache may use, in MiB; the least recently used
    artifacts are removed beyond it (a job whose artifact went compiles it again)."""


GuestPath = Annotated[str, Field(pattern=r"^/[^\x00]*$", max_length=1024)]


class InterpreterSettings(_Section):
    """One interpreter a job may name as ``"runtime"`` (``[runtimes.<name>]``).

    The job's ``script`` is placed read-only at ``/script/<script_name>`` in the
    guest; the interpreter runs with ``args`` before the job's own arguments and
    ``env`` under the job's own variables. Only the folders in ``mounts`` (read-only)
    and the job's ``/out`` are visible to it."""

    module: Path
    """The interpreter's WASI module (``.wasm``); relative paths resolve against the
    config file's folder."""
    mounts: dict[GuestPath, Path] = {}
    """Guest path -> host folder, each mounted read-only (a standard library, say).
    Relative host paths resolve against the config file's folder. Folders only:
    WASI opens folders, and a file's siblings would be visible through its folder."""
    args: Annotated[list[str], Field(max_length=100)] = []
    """Arguments before the job's own, e.g. ``["/script/main.py"]``."""
    env: dict[str, str] = {}
    """Environment under the job's own (a job's variable of the same name wins)."""
    script_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,100}$")] = "script"
    """The script's file name under ``/script``."""
    max_script_kb: Annotated[int, Field(ge=1, le=1024)] = 64
    """Largest ``script`` a job may send, in KiB (it is kept in the job record)."""
    optional: bool = False
    """When the module or a mounted folder is missing: ``false`` stops start-up naming
    the key; ``true`` starts anyway and lists the runtime as ``unavailable`` with the
    reason (``config/local.toml`` does this, so ``make run`` works before ``make
    runtimes``)."""
    compile_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    """Wall-clock (and CPU-time) cap of compiling the interpreter once, at start-up, in
    seconds; instead of ``modules.compile_timeout_s``, which is meant for tenants'
    uploads. CPython for WASI (99 MB) took ~100-270 s on a 2-core machine."""
    compile_memory_mb: Annotated[int, Field(ge=64)] = 4096
    """Address-space cap of that compilation, in MiB (``modules.compile_memory_mb``
    is the uploads' cap)."""

    @field_validator("mounts")
    @classmethod
    def _no_reserved(cls, mounts: dict[str, Path]) -> dict[str, Path]:
        for guest in mounts:
            if guest.rstrip("/") in ("", "/out", "/script"):
                raise ValueError(f"{guest!r} is reserved (/out and /script are the job's own)")
        return mounts


NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
"""A tenant's or a runtime's name: a DNS label, so it fits a topic name, a label, a URL."""


class LimitSettings(_Section):
    default_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """Wall-clock limit of a job that asks for none, in seconds."""
    max_timeout_s: Annotated[float, Field(gt=0)] = 3600.0
    """Largest ``limits.timeout_s`` a job may ask for."""
    default_memory_mb: Annotated[int, Field(ge=1)] = 256
    """Linear-memory cap of a job that asks for none, in MiB."""
    max_memory_mb: Annotated[int, Field(ge=1)] = 4096
    """Largest ``limits.memory_mb`` a job may ask for (wasm32 tops out at 4096)."""
    max_fuel: Annotated[int, Field(ge=1)] | None = None
    """Largest ``limits.fuel`` a job may ask for (None = any). Fuel is off unless asked."""


class KubernetesSettings(_Section):
    namespace: str | None = None
    """Namespace of the runner pods (and of the leader Lease). Unset: poold's own namespace
    when it runs in a pod (``POD_NAMESPACE``, else the service account's namespace file),
    else the kubeconfig context's namespace, else ``poold`` -- as kubectl chooses."""
    pod_template: Path = Path("deploy/runner/pod-template.yaml")
    """Runner pod template, the same file that ships in ``deploy/``."""
    kubeconfig: Path | None = None
    """A kubeconfig file (relative: to this config file's folder). Unset: kubectl's order,
    ``$KUBECONFIG``, then ``~/.kube/config``, then the in-cluster service account."""
    pool_name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")] = "default"
    """Label value that marks this pool's pods, so several pools can share a namespace."""
    agent_port: Annotated[int, Field(ge=1, le=65535)] = 8081
    """Port of the agent in runner pods (readiness, nudge, events)."""
    watch_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """A watch with no event for this long is re-opened (bounded inactivity)."""
    api_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """Longest wait for one API call (the watch excepted), in seconds. A call that hangs
    counts as a temporary failure; without a bound a silent connection would hang the
    pool, or keep a leader that can no longer renew its Lease believing it leads."""
    api_retries: Annotated[int, Field(ge=1, le=20)] = 5
    """Attempts for an API call that failed for a temporary reason (5xx, 429, dropped)."""
    leader_election: bool = True
    """Take a coordination.k8s.io Lease before managing pods (needed with 2 replicas)."""
    lease_name: str = "poold-leader"
    """Name of that Lease."""
    lease_duration_s: Annotated[float, Field(gt=0)] = 15.0
    """How long a leader's lease lasts without renewal. The leader stops managing pods
    when it could not renew for two thirds of it; a candidate takes the Lease only after
    it has seen the Lease unchanged for all of it, timed on its own clock (as client-go
    does), so clock skew between nodes never makes two leaders."""
    owner_deployment: str | None = None
    """Deployment that owns runner pods (ownerReference), so deleting poold deletes them."""
    runtimes_mount_path: Annotated[str, Field(pattern=r"^/[^:]*$")] = "/runtimes"
    """Where runner pods see the runtimes poold publishes to ``<slots.root>/runtimes``
    (a read-only mount poold adds to the pod template when ``[runtimes.*]`` are
    configured); the agent gets it as ``POOLD_AGENT_RUNTIMES``."""
    runtimes_retention_s: Annotated[float, Field(ge=3600)] = 86400.0
    """A runtime's folder or compiled form under ``<slots.root>/runtimes`` that this
    config does not use and no job in a slot names is removed once no replica has used
    it for this long, in seconds (poold/modules/prune.py). Every replica marks what it
    uses every 10 min, so a replica running another config keeps its own; a day leaves
    an operator time to roll a change back without copying ~0.5 GB again. At least 1 h."""


class TenantSettings(_Section):
    token_sha256: TokenHash
    """Hex sha256 of the tenant's bearer token (``poold token`` makes a pair)."""
    max_concurrent_jobs: Annotated[int, Field(ge=1)] = 8
    """Jobs of this tenant assigned or running at once; more wait in the queue."""
    max_queued_jobs: Annotated[int, Field(ge=1)] = 10000
    """Jobs of this tenant waiting at once; beyond it submissions get 429."""


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    pool: PoolSettings = PoolSettings()
    slots: SlotSettings = SlotSettings()
    state: StateSettings = StateSettings()
    kafka: KafkaSettings = KafkaSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    limits: LimitSettings = LimitSettings()
    modules: ModuleSettings = ModuleSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    retention: RetentionSettings = RetentionSettings()
    retry: RetrySettings = RetrySettings()
    tenants: dict[Annotated[TenantName, Field(pattern=NAME_PATTERN)], TenantSettings] = {}
    runtimes: dict[Annotated[str, Field(pattern=NAME_PATTERN)], InterpreterSettings] = {}
    """Interpreters jobs may name instead of a module (docs/runtimes.md)."""

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.limits.default_timeout_s > self.limits.max_timeout_s:
            raise ValueError("limits.default_timeout_s exceeds limits.max_timeout_s")
        if self.limits.default_memory_mb > self.limits.max_memory_mb:
            raise ValueError("limits.default_memory_mb exceeds limits.max_memory_mb")
        for name, tenant in self.tenants.items():
            if tenant.max_concurrent_jobs > self.kafka.partitions:
                raise ValueError(
                    f"tenants.{name}.max_concurrent_jobs ({tenant.max_concurrent_jobs}) exceeds "
                    f"kafka.partitions ({self.kafka.partitions}): every running job leases "
                    "its own partition"
                )
        hashes = [t.token_sha256 for t in self.tenants.values()]
        if len(hashes) != len(set(hashes)):
            raise ValueError("two tenants share one token_sha256; each tenant needs its own token")
        if self.server.admin_token_sha256 in hashes:
            raise ValueError("server.admin_token_sha256 is also a tenant's token_sha256; "
                             "the administrator needs a token no tenant has")
        return self

    @property
    def cache_dir(self) -> Path:
        return self.runtime.cache_dir or self.state.dir / "cache"


ENV_PREFIX = "POOLD_"


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__")]
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: conflicts with another POOLD_ variable")
            node = child
        node[path[-1]] = value
    return tree


def merge_tables(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` laid over ``base``, table by table (a key of ``top`` replaces the same key
    of ``base`` unless both are tables); neither is changed. How ``POOLD_*`` variables
    override the file; the bench lays a scenario's ``[poold]`` over its config with it."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def _from_env(loc: tuple[int | str, ...], overrides: dict[str, Any]) -> str | None:
    """The POOLD_ variable that set this key, if one did."""
    node: Any = overrides
    for part in loc:
        if not isinstance(node, dict) or str(part) not in node:
            return None
        node = node[str(part)]
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc)


Loc = tuple[int | str, ...]


def dotted(loc: Loc) -> str | None:
    """``limits.timeout_s``; None for the whole document."""
    return ".".join(str(part) for part in loc) or None


def explain(
    error: ValidationError,
    *,
    key: Callable[[Loc], str | None] = dotted,
    messages: Mapping[str, Callable[[Loc], str]] | None = None,
) -> list[str]:
    """One sentence per problem, ``key: what is wrong``, for the config file, ``PUT
    /v1/pool`` and request bodies alike. ``key`` names a location (None: say no key,
    for a rule across fields); ``messages`` replaces pydantic's text for an error type
    (``extra_forbidden``); pydantic's "Value error, " never reaches a person."""
    sentences = []
    for item in error.errors():
        loc = item["loc"]
        special = (messages or {}).get(item["type"])
        message = special(loc) if special else str(item["msg"]).removeprefix("Value error, ")
        where = key(loc)
        sentences.append(f"{where}: {message}" if where else message)
    return sentences


def _describe(error: ValidationError, overrides: dict[str, Any] | None = None) -> str:
    def key(loc: Loc) -> str:
        where = ".".join(str(part) for part in loc) or "(top level)"
        variable = _from_env(loc, overrides or {})
        return where if variable is None else f"{where} (from the environment variable {variable})"

    unknown = "unknown key (check its spelling against config/local.toml)"
    return "; ".join(explain(error, key=key, messages={"extra_forbidden": lambda _: unknown}))


FILE_PATHS = (("kubernetes", "kubeconfig"), ("kubernetes", "pod_template"))
"""Keys naming a file: relative in a config file, they resolve against its folder."""


def _relative_to(folder: Path, data: dict[str, Any]) -> None:
    for section, key in FILE_PATHS:
        values = data.get(section)
        value = values.get(key) if isinstance(values, dict) else None
        if isinstance(value, str) and value:
            values[key] = _resolve(folder, value)  # type: ignore[index]
    runtimes = data.get("runtimes")
    if not isinstance(runtimes, dict):
        return
    for runtime in runtimes.values():
        if not isinstance(runtime, dict):
            continue
        if isinstance(runtime.get("module"), str) and runtime["module"]:
            runtime["module"] = _resolve(folder, runtime["module"])
        mounts = runtime.get("mounts")
        if isinstance(mounts, dict):
            for guest, host in mounts.items():
                if isinstance(host, str) and host:
                    mounts[guest] = _resolve(folder, host)


def _resolve(folder: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else folder / path)


def load_settings(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read ``path`` (TOML), apply ``POOLD_...`` overrides, validate everything."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"config file {path} does not exist") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
        _relative_to(path.parent.absolute(), data)  # workers run in other folders
    overrides = _env_overrides(os.environ if environ is None else environ)
    data = merge_tables(data, overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        where = f" in {path}" if path else ""
        raise ConfigError(
            f"invalid configuration{where}: {_describe(e, overrides)}"
        ) from e
