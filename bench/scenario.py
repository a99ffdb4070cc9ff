"""Scenario definitions: one TOML file each, validated with messages that name the key.

A scenario says how many jobs of which module to submit, how they arrive,
and how the poold under test is configured (pool, Kafka partitions, tenant
quota). ``bench/scenarios/README.md`` documents every key.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

Arrival = Literal["sequential", "all_at_once", "even", "poisson", "ramp_up", "ramp_down"]
Role = Literal["warm", "hot", "cold", "throughput", "throughput_reuse", "output", "arrival"]

ARRIVALS: tuple[Arrival, ...] = (
    "sequential", "all_at_once", "even", "poisson", "ramp_up", "ramp_down",
)
RAMPS: tuple[Arrival, ...] = ("ramp_up", "ramp_down")
ROLES: tuple[Role, ...] = (
    "warm", "hot", "cold", "throughput", "throughput_reuse", "output", "arrival",
)

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
STANDARD = (
    "warm-sequential", "hot-sequential", "warm-fsync", "cold-sequential", "throughput",
    "throughput-reuse", "upper-input", "burst",
    "arrival-even", "arrival-ramp-up", "arrival-ramp-down",
    "compile-small", "compile-large", "poisson-sizing", "kube-scale", "kube-scale-real",
    "languages-cpu", "languages-data",
)
"""The standard set ``python -m bench`` runs, in this order (file stems; a file
with a ``sweep`` becomes several scenarios)."""

DEFAULT_MAX_IN_FLIGHT = 256
STUCK_AFTER = 3
"""Jobs in a row past their ``job_deadline_s`` after which a phase gives up: poold is stuck."""
QUICK_JOBS = 10
QUICK_TAIL_S = 2.0
"""``tail_s`` under ``--quick`` (a smoke run does not wait for the pool to shrink)."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_OWNED = ("server", "slots", "state", "tenants")
"""poold config sections the bench generates itself; ``[poold]`` may not set them."""


class ScenarioError(Exception):
    """A scenario file cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class PoolConfig:
    min_idle: int | Literal["auto"] = 4
    """A fixed idle count, or ``"auto"`` (poold's measured target, docs/pool-sizing.md)."""
    max_pods: int = 16
    max_starting: int = 8
    min_idle_floor: int | None = None
    """``pool.min_idle_floor`` (None: poold's default, 1)."""
    idle_ttl_s: float | None = None
    """``pool.idle_ttl_s`` (None: poold's default)."""

    @property
    def auto(self) -> bool:
        return self.min_idle == "auto"


@dataclass(frozen=True)
class KubeScale:
    """The scale scenario (``kind = "kube_scale"``): poold's Kubernetes backend and
    pool in a process of their own against the fake API server, whose pods an
    "instant kubelet" marks Ready without running anything (see ``bench.kubescale``)."""

    name: str
    pods: int = 1000
    """min_idle = max_pods = this: the pool is filled to it."""
    claims: int = 500
    """Sequential ``take_idle`` + ``claim`` (the fenced PATCH) after the fill."""
    max_starting: int = 100
    idle_s: float = 5.0
    """Seconds the full pool is left alone to measure its idle CPU cost."""
    quick_pods: int = 50
    quick_claims: int = 20
    timeout_s: float = 180.0
    api: str = "fake"
    """``fake``: the in-repo fake API server; ``real``: kube-apiserver and etcd built by
    tests/cluster (``make cluster-build``), with a hollow kubelet stand-in."""
    description: str = ""
    source: str | None = None
    kind: str = "kube_scale"

    def quick(self) -> KubeScale:
        return dataclasses.replace(
            self, pods=min(self.pods, self.quick_pods),
            claims=min(self.claims, self.quick_claims, self.quick_pods),
            max_starting=min(self.max_starting, self.quick_pods), idle_s=min(self.idle_s, 1.0),
        )

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Scenario:
    name: str
    jobs: int
    arrival: Arrival
    module: str = "noop"
    input_records: int = 0
    tenants: int = 1
    rate: float | None = None
    """Jobs per second for ``even`` and ``poisson`` arrivals."""
    rate_from: float | None = None
    rate_to: float | None = None
    """``ramp_up`` / ``ramp_down``: the arrival rate moves linearly from ``rate_from``
    to ``rate_to`` jobs/s over the phase."""
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    """Most jobs the client has open at once (submitted, end not yet seen)."""
    warmup_jobs: int = 0
    quick_jobs: int | None = None
    aged_jobs: int = 0
    """After the measurement on the fresh daemon, run this many jobs (phase ``aging``,
    ``aged_max_in_flight`` open at once), then measure the same jobs again on that
    daemon (mode ``aged``; the first measurement is mode ``fresh``)."""
    aged_max_in_flight: int = 64
    aged_timeout_s: float | None = None
    """A time budget for the aging phase: it stops submitting then (the jobs it ran
    are counted and reported). None: ``timeout_s``."""
    quick_aged_jobs: int = 20
    new_module_every: int = 0
    """Every this many measured jobs a fresh variant of the module (its bytes made
    unique by a custom section) is uploaded just before the next job is submitted:
    that job meets the compile cache cold (mode ``cold``), the others hot (``hot``)."""
    fsync: bool = False
    """poold's ``slots.fsync`` and ``state.fsync`` (``config/local.toml`` has both off)."""
    group: str | None = None
    """The file a ``sweep`` expanded into several scenarios (the sizing table groups by it)."""
    role: Role | None = None
    description: str = ""
    seed: int = 1
    timeout_s: float = 300.0
    """Client deadline for the measured phase; jobs still open then count as errors."""
    job_deadline_s: float = 30.0
    """Client deadline per job; a job not seen ending by then is cancelled and counted
    as ``client_timeout``. After ``STUCK_AFTER`` such jobs in a row the phase stops."""
    job_timeout_s: float | None = None
    """``limits.timeout_s`` sent with each job (None: the server's default)."""
    pool: PoolConfig = PoolConfig()
    tail_s: float = 0.0
    """After the measured phase, keep sampling the pool this long (phase ``tail``):
    how fast it shrinks once the load stops."""
    max_concurrent_jobs: int = 8
    partitions: int = 16
    poold: dict[str, Any] = field(default_factory=dict)
    """Any other poold configuration, merged into the generated config file."""
    source: str | None = None
    kind: str = "jobs"

    def quick(self) -> Scenario:
        """The same scenario with few jobs, for smoke runs."""
        jobs = self.quick_jobs if self.quick_jobs is not None else min(self.jobs, QUICK_JOBS)
        return dataclasses.replace(
            self, jobs=jobs, warmup_jobs=min(self.warmup_jobs, 1),
            aged_jobs=min(self.aged_jobs, self.quick_aged_jobs),
            new_module_every=min(self.new_module_every, max(1, jobs // 2)),
            tail_s=min(self.tail_s, QUICK_TAIL_S),
        )

    def modes(self) -> tuple[str, ...]:
        """The modes this scenario's measured rows carry (``""``: just one)."""
        if self.aged_jobs:
            return ("fresh", "aged")
        if self.new_module_every:
            return ("cold", "hot")
        return ("",)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (for results.json)."""
        out = dataclasses.asdict(self)
        out["pool"] = dataclasses.asdict(self.pool)
        return out


LangVariant = Literal["wasm", "python", "python-snapshot", "native"]
LANG_VARIANTS: tuple[LangVariant, ...] = ("wasm", "python", "python-snapshot", "native")
LANG_WORKLOADS = ("sieve", "wordrev")


@dataclass(frozen=True)
class Languages:
    """A languages scenario (``kind = "languages"``, ``bench.languages``): one program
    (``bench/lang/<workload>.c`` and ``.py``) run as C compiled to wasm, as a script on
    the python runtime (plain and pre-initialised snapshot module), and as native C
    started as a fresh process per job (the container-style baseline)."""

    name: str
    workload: str
    jobs: int = 10
    quick_jobs: int = 3
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] | None = None
    input_records: int = 0
    quick_input_records: int | None = None
    variants: tuple[LangVariant, ...] = LANG_VARIANTS
    job_timeout_s: float = 120.0
    """``limits.timeout_s`` of each job, and the native run's own limit."""
    memory_mb: int = 256
    description: str = ""
    source: str | None = None
    kind: str = "languages"

    def quick(self) -> Languages:
        return dataclasses.replace(
            self, jobs=min(self.jobs, self.quick_jobs),
            args=self.quick_args if self.quick_args is not None else self.args,
            input_records=(self.quick_input_records if self.quick_input_records is not None
                           else self.input_records))

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


AnyScenario = Scenario | KubeScale | Languages

_TOP_KEYS = {
    "name", "description", "role", "jobs", "quick_jobs", "warmup_jobs", "arrival", "rate",
    "rate_from", "rate_to", "max_in_flight", "module", "input_records", "tenants", "seed",
    "timeout_s", "job_timeout_s", "job_deadline_s", "pool", "tenant", "kafka", "poold",
    "aged_jobs", "aged_max_in_flight", "aged_timeout_s", "quick_aged_jobs", "new_module_every",
    "sweep", "kind", "fsync", "tail_s",
}
_KUBE_KEYS = {
    "kind", "name", "description", "pods", "claims", "max_starting", "idle_s", "quick_pods",
    "quick_claims", "timeout_s", "api",
}
_POOL_KEYS = {"min_idle", "max_pods", "max_starting", "min_idle_floor", "idle_ttl_s"}
_SWEEP_KEYS = _POOL_KEYS | {"tail_s"}


def _where(path: Path | None, key: str) -> str:
    return f"{path}: {key}" if path else key


def _int(data: dict[str, Any], key: str, default: int | None, path: Path | None,
         *, minimum: int, prefix: str = "") -> int:
    value = data.get(key, default)
    if value is None:
        raise ScenarioError(f"{_where(path, prefix + key)}: missing (a whole number is needed)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(f"{_where(path, prefix + key)}: must be a whole number, not {value!r}")
    if value < minimum:
        raise ScenarioError(f"{_where(path, prefix + key)}: must be at least {minimum}")
    return value


def _float(data: dict[str, Any], key: str, path: Path | None) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ScenarioError(f"{_where(path, key)}: must be a positive number, not {value!r}")
    return float(value)


def _bool(data: dict[str, Any], key: str, path: Path | None) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ScenarioError(f"{_where(path, key)}: must be true or false, not {value!r}")
    return value


def _table(data: dict[str, Any], key: str, allowed: set[str], path: Path | None
           ) -> dict[str, Any]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise ScenarioError(f"{_where(path, key)}: must be a table ([{key}])")
    unknown = sorted(set(table) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        raise ScenarioError(f"{_where(path, key + '.' + unknown[0])}: unknown key; known: {known}")
    return cast(dict[str, Any], table)


def _name(data: dict[str, Any], path: Path | None) -> str:
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ScenarioError(
            f"{_where(path, 'name')}: needs 1-64 characters from A-Z a-z 0-9 _ . - (got {name!r})"
        )
    return name


def _description(data: dict[str, Any], path: Path | None) -> str:
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError(f"{_where(path, 'description')}: must be a string")
    return description


def parse_kube(data: dict[str, Any], path: Path | None = None) -> KubeScale:
    """Validate a ``kind = "kube_scale"`` scenario."""
    unknown = sorted(set(data) - _KUBE_KEYS)
    if unknown:
        raise ScenarioError(
            f"{_where(path, unknown[0])}: unknown key for kind \"kube_scale\"; known: "
            f"{', '.join(sorted(_KUBE_KEYS))}"
        )
    d = KubeScale(name=_name(data, path))
    scale = KubeScale(
        name=d.name,
        description=_description(data, path),
        pods=_int(data, "pods", d.pods, path, minimum=1),
        claims=_int(data, "claims", d.claims, path, minimum=0),
        max_starting=_int(data, "max_starting", d.max_starting, path, minimum=1),
        idle_s=_float(data, "idle_s", path) or d.idle_s,
        quick_pods=_int(data, "quick_pods", d.quick_pods, path, minimum=1),
        quick_claims=_int(data, "quick_claims", d.quick_claims, path, minimum=0),
        timeout_s=_float(data, "timeout_s", path) or d.timeout_s,
        api=str(data.get("api", d.api)),
        source=str(path) if path else None,
    )
    if scale.api not in ("fake", "real"):
        raise ScenarioError(f"{_where(path, 'api')}: must be \"fake\" or \"real\"")
    if scale.claims > scale.pods:
        raise ScenarioError(f"{_where(path, 'claims')}: exceeds pods ({scale.pods})")
    return scale


_LANG_KEYS = {
    "kind", "name", "description", "workload", "jobs", "quick_jobs", "args", "quick_args",
    "input_records", "quick_input_records", "variants", "job_timeout_s", "memory_mb",
}


def _strings(data: dict[str, Any], key: str, path: Path | None) -> tuple[str, ...] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ScenarioError(f"{_where(path, key)}: must be a list of strings")
    return tuple(value)


def parse_languages(data: dict[str, Any], path: Path | None = None) -> Languages:
    """Validate a ``kind = "languages"`` scenario."""
    unknown = sorted(set(data) - _LANG_KEYS)
    if unknown:
        raise ScenarioError(
            f"{_where(path, unknown[0])}: unknown key for kind \"languages\"; known: "
            f"{', '.join(sorted(_LANG_KEYS))}")
    workload = data.get("workload")
    if workload not in LANG_WORKLOADS:
        raise ScenarioError(f"{_where(path, 'workload')}: must be one of "
                            f"{', '.join(LANG_WORKLOADS)} (bench/lang/<workload>.c and .py)")
    variants = _strings(data, "variants", path) or LANG_VARIANTS
    bad = [v for v in variants if v not in LANG_VARIANTS]
    if bad:
        raise ScenarioError(f"{_where(path, 'variants')}: {bad[0]!r} is not one of "
                            f"{', '.join(LANG_VARIANTS)}")
    d = Languages(name=_name(data, path), workload=str(workload))
    quick_records = data.get("quick_input_records")
    return Languages(
        name=d.name, workload=d.workload, description=_description(data, path),
        jobs=_int(data, "jobs", d.jobs, path, minimum=1),
        quick_jobs=_int(data, "quick_jobs", d.quick_jobs, path, minimum=1),
        args=_strings(data, "args", path) or (),
        quick_args=_strings(data, "quick_args", path),
        input_records=_int(data, "input_records", 0, path, minimum=0),
        quick_input_records=None if quick_records is None else _int(
            data, "quick_input_records", None, path, minimum=0),
        variants=cast(tuple[LangVariant, ...], variants),
        job_timeout_s=_float(data, "job_timeout_s", path) or d.job_timeout_s,
        memory_mb=_int(data, "memory_mb", d.memory_mb, path, minimum=1),
        source=str(path) if path else None,
    )


def parse_all(data: dict[str, Any], path: Path | None = None) -> list[AnyScenario]:
    """One file's scenarios: a ``kube_scale`` scenario, one job scenario, or, with
    ``sweep = [{min_idle = 0}, ...]``, one job scenario per entry, named
    ``<name>-idle<min_idle>-max<max_pods>`` (``-start<max_starting>`` when set)."""
    kind = data.get("kind", "jobs")
    if kind == "kube_scale":
        return [parse_kube(data, path)]
    if kind == "languages":
        return [parse_languages(data, path)]
    if kind != "jobs":
        raise ScenarioError(f"{_where(path, 'kind')}: must be \"jobs\", \"kube_scale\" or "
                            "\"languages\"")
    sweep = data.get("sweep")
    if sweep is None:
        return [parse(data, path)]
    if not isinstance(sweep, list) or not sweep or not all(isinstance(v, dict) for v in sweep):
        raise ScenarioError(f"{_where(path, 'sweep')}: must be a non-empty list of tables, "
                            "e.g. [{min_idle = 0}, {min_idle = 4, max_pods = 8}]")
    base = _name(data, path)
    out: list[AnyScenario] = []
    for i, variant in enumerate(sweep):
        unknown = sorted(set(variant) - _SWEEP_KEYS)
        if unknown:
            raise ScenarioError(f"{_where(path, f'sweep[{i}].{unknown[0]}')}: unknown key; "
                                f"known: {', '.join(sorted(_SWEEP_KEYS))}")
        base_pool = data.get("pool", {})
        if not isinstance(base_pool, dict):
            raise ScenarioError(f"{_where(path, 'pool')}: must be a table ([pool])")
        pool = {**base_pool, **{k: v for k, v in variant.items() if k in _POOL_KEYS}}
        name = f"{base}-idle{pool.get('min_idle', 4)}-max{pool.get('max_pods', 16)}"
        if "max_starting" in variant:
            name += f"-start{variant['max_starting']}"
        one = {k: v for k, v in data.items() if k != "sweep"}
        one.update(name=name, pool=pool)
        if "tail_s" in variant:
            one["tail_s"] = variant["tail_s"]
        out.append(dataclasses.replace(parse(one, path), group=base))
    return out


def parse(data: dict[str, Any], path: Path | None = None) -> Scenario:
    """Validate one job scenario's TOML data (no ``sweep``)."""
    unknown = sorted(set(data) - _TOP_KEYS - {"sweep"})
    if unknown:
        raise ScenarioError(
            f"{_where(path, unknown[0])}: unknown key; known: {', '.join(sorted(_TOP_KEYS))}"
        )
    name = _name(data, path)
    if data.get("kind", "jobs") != "jobs":
        raise ScenarioError(f"{_where(path, 'kind')}: must be \"jobs\" here")
    arrival = data.get("arrival", "sequential")
    if arrival not in ARRIVALS:
        raise ScenarioError(
            f"{_where(path, 'arrival')}: must be one of {', '.join(ARRIVALS)} (got {arrival!r})"
        )
    rate = _float(data, "rate", path)
    if arrival in ("even", "poisson") and rate is None:
        raise ScenarioError(f"{_where(path, 'rate')}: arrival {arrival!r} needs a rate (jobs/s)")
    rate_from, rate_to = _float(data, "rate_from", path), _float(data, "rate_to", path)
    if arrival in RAMPS:
        if rate_from is None or rate_to is None:
            raise ScenarioError(f"{_where(path, 'rate_from')}: arrival {arrival!r} needs "
                                "rate_from and rate_to (jobs/s)")
        if (arrival == "ramp_up") != (rate_to > rate_from) or rate_to == rate_from:
            raise ScenarioError(
                f"{_where(path, 'rate_to')}: {arrival} needs rate_to "
                f"{'above' if arrival == 'ramp_up' else 'below'} rate_from"
            )
    role = data.get("role")
    if role is not None and role not in ROLES:
        raise ScenarioError(f"{_where(path, 'role')}: must be one of {', '.join(ROLES)}")
    module = data.get("module", "noop")
    if not isinstance(module, str) or not module:
        raise ScenarioError(f"{_where(path, 'module')}: must be a fixture name or a .wasm path")
    description = _description(data, path)

    pool_t = _table(data, "pool", _POOL_KEYS, path)
    auto = pool_t.get("min_idle") == "auto"
    if isinstance(pool_t.get("min_idle"), str) and not auto:
        raise ScenarioError(f"{_where(path, 'pool.min_idle')}: must be a whole number or "
                            f"\"auto\", not {pool_t['min_idle']!r}")
    floor = pool_t.get("min_idle_floor")
    pool = PoolConfig(
        min_idle="auto" if auto else _int(pool_t, "min_idle", 4, path, minimum=0,
                                          prefix="pool."),
        max_pods=_int(pool_t, "max_pods", 16, path, minimum=1, prefix="pool."),
        max_starting=_int(pool_t, "max_starting", 8, path, minimum=1, prefix="pool."),
        min_idle_floor=(None if floor is None
                        else _int(pool_t, "min_idle_floor", None, path, minimum=0,
                                  prefix="pool.")),
        idle_ttl_s=_float(pool_t, "idle_ttl_s", path),
    )
    if not isinstance(pool.min_idle, str) and pool.min_idle > pool.max_pods:
        raise ScenarioError(f"{_where(path, 'pool.min_idle')}: exceeds pool.max_pods")
    if (pool.min_idle_floor or 0) > pool.max_pods:
        raise ScenarioError(f"{_where(path, 'pool.min_idle_floor')}: exceeds pool.max_pods")
    tail = data.get("tail_s", 0.0)
    if isinstance(tail, bool) or not isinstance(tail, int | float) or tail < 0:
        raise ScenarioError(f"{_where(path, 'tail_s')}: must be a number of seconds (0 or "
                            f"more), not {tail!r}")
    tenant_t = _table(data, "tenant", {"max_concurrent_jobs"}, path)
    kafka_t = _table(data, "kafka", {"partitions"}, path)
    partitions = _int(kafka_t, "partitions", 16, path, minimum=1, prefix="kafka.")
    max_concurrent = _int(tenant_t, "max_concurrent_jobs", 8, path, minimum=1,
                          prefix="tenant.")
    if max_concurrent > partitions:
        raise ScenarioError(
            f"{_where(path, 'tenant.max_concurrent_jobs')}: exceeds kafka.partitions "
            f"({partitions}); every running job leases its own partition"
        )
    poold = data.get("poold", {})
    if not isinstance(poold, dict):
        raise ScenarioError(f"{_where(path, 'poold')}: must be a table of poold config sections")
    owned = sorted(set(poold) & set(_OWNED))
    if owned:
        raise ScenarioError(
            f"{_where(path, 'poold.' + owned[0])}: the bench generates this section itself"
        )

    jobs = _int(data, "jobs", None, path, minimum=1)
    quick_jobs = data.get("quick_jobs")
    if quick_jobs is not None:
        quick_jobs = _int(data, "quick_jobs", None, path, minimum=1)
    timeout_s = _float(data, "timeout_s", path)
    job_deadline_s = _float(data, "job_deadline_s", path)
    aged_jobs = _int(data, "aged_jobs", 0, path, minimum=0)
    new_module_every = _int(data, "new_module_every", 0, path, minimum=0)
    if aged_jobs and new_module_every:
        raise ScenarioError(f"{_where(path, 'new_module_every')}: cannot be combined with "
                            "aged_jobs in one scenario")
    if new_module_every and arrival != "sequential":
        raise ScenarioError(f"{_where(path, 'new_module_every')}: needs arrival "
                            "\"sequential\" (the cold job must be the first on its module)")
    return Scenario(
        name=name,
        description=description,
        role=cast(Role | None, role),
        jobs=jobs,
        quick_jobs=quick_jobs,
        warmup_jobs=_int(data, "warmup_jobs", 0, path, minimum=0),
        arrival=cast(Arrival, arrival),
        rate=rate,
        rate_from=rate_from,
        rate_to=rate_to,
        aged_jobs=aged_jobs,
        aged_max_in_flight=_int(data, "aged_max_in_flight", 64, path, minimum=1),
        aged_timeout_s=_float(data, "aged_timeout_s", path),
        fsync=_bool(data, "fsync", path),
        quick_aged_jobs=_int(data, "quick_aged_jobs", 20, path, minimum=0),
        new_module_every=new_module_every,
        max_in_flight=(
            1 if arrival == "sequential"
            else _int(data, "max_in_flight", DEFAULT_MAX_IN_FLIGHT, path, minimum=1)
        ),
        module=module,
        input_records=_int(data, "input_records", 0, path, minimum=0),
        tenants=_int(data, "tenants", 1, path, minimum=1),
        seed=_int(data, "seed", 1, path, minimum=0),
        timeout_s=timeout_s if timeout_s is not None else 300.0,
        job_timeout_s=_float(data, "job_timeout_s", path),
        job_deadline_s=job_deadline_s if job_deadline_s is not None else 30.0,
        pool=pool,
        tail_s=float(tail),
        max_concurrent_jobs=max_concurrent,
        partitions=partitions,
        poold=cast(dict[str, Any], poold),
        source=str(path) if path else None,
    )


def load(path: Path) -> list[AnyScenario]:
    """Read and validate one scenario file (several scenarios with a ``sweep``)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ScenarioError(f"{path}: no such scenario file") from e
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from e
    return parse_all(data, path)


def standard() -> list[AnyScenario]:
    """The standard set, from ``bench/scenarios/<name>.toml``."""
    return [s for name in STANDARD for s in load(SCENARIO_DIR / f"{name}.toml")]
