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

Arrival = Literal["sequential", "all_at_once", "even", "poisson"]
Role = Literal["warm", "cold", "throughput"]

ARRIVALS: tuple[Arrival, ...] = ("sequential", "all_at_once", "even", "poisson")
ROLES: tuple[Role, ...] = ("warm", "cold", "throughput")

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
STANDARD = ("warm-sequential", "cold-sequential", "throughput", "upper-input")
"""The standard set ``python -m bench`` runs, in this order."""

DEFAULT_MAX_IN_FLIGHT = 256
STUCK_AFTER = 3
"""Jobs in a row past their ``job_deadline_s`` after which a phase gives up: poold is stuck."""
QUICK_JOBS = 10

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_OWNED = ("server", "slots", "state", "tenants")
"""poold config sections the bench generates itself; ``[poold]`` may not set them."""


class ScenarioError(Exception):
    """A scenario file cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class PoolConfig:
    min_idle: int = 4
    max_pods: int = 16
    max_starting: int = 8


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
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    """Most jobs the client has open at once (submitted, end not yet seen)."""
    warmup_jobs: int = 0
    quick_jobs: int | None = None
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
    max_concurrent_jobs: int = 8
    partitions: int = 16
    poold: dict[str, Any] = field(default_factory=dict)
    """Any other poold configuration, merged into the generated config file."""
    source: str | None = None

    def quick(self) -> Scenario:
        """The same scenario with few jobs, for smoke runs."""
        jobs = self.quick_jobs if self.quick_jobs is not None else min(self.jobs, QUICK_JOBS)
        return dataclasses.replace(self, jobs=jobs, warmup_jobs=min(self.warmup_jobs, 1))

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (for results.json)."""
        out = dataclasses.asdict(self)
        out["pool"] = dataclasses.asdict(self.pool)
        return out


_TOP_KEYS = {
    "name", "description", "role", "jobs", "quick_jobs", "warmup_jobs", "arrival", "rate",
    "max_in_flight", "module", "input_records", "tenants", "seed", "timeout_s", "job_timeout_s",
    "job_deadline_s", "pool", "tenant", "kafka", "poold",
}


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


def parse(data: dict[str, Any], path: Path | None = None) -> Scenario:
    """Validate one scenario's TOML data."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ScenarioError(
            f"{_where(path, unknown[0])}: unknown key; known: {', '.join(sorted(_TOP_KEYS))}"
        )
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ScenarioError(
            f"{_where(path, 'name')}: needs 1-64 characters from A-Z a-z 0-9 _ . - (got {name!r})"
        )
    arrival = data.get("arrival", "sequential")
    if arrival not in ARRIVALS:
        raise ScenarioError(
            f"{_where(path, 'arrival')}: must be one of {', '.join(ARRIVALS)} (got {arrival!r})"
        )
    rate = _float(data, "rate", path)
    if arrival in ("even", "poisson") and rate is None:
        raise ScenarioError(f"{_where(path, 'rate')}: arrival {arrival!r} needs a rate (jobs/s)")
    role = data.get("role")
    if role is not None and role not in ROLES:
        raise ScenarioError(f"{_where(path, 'role')}: must be one of {', '.join(ROLES)}")
    module = data.get("module", "noop")
    if not isinstance(module, str) or not module:
        raise ScenarioError(f"{_where(path, 'module')}: must be a fixture name or a .wasm path")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError(f"{_where(path, 'description')}: must be a string")

    pool_t = _table(data, "pool", {"min_idle", "max_pods", "max_starting"}, path)
    pool = PoolConfig(
        min_idle=_int(pool_t, "min_idle", 4, path, minimum=0, prefix="pool."),
        max_pods=_int(pool_t, "max_pods", 16, path, minimum=1, prefix="pool."),
        max_starting=_int(pool_t, "max_starting", 8, path, minimum=1, prefix="pool."),
    )
    if pool.min_idle > pool.max_pods:
        raise ScenarioError(f"{_where(path, 'pool.min_idle')}: exceeds pool.max_pods")
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
    return Scenario(
        name=name,
        description=description,
        role=cast(Role | None, role),
        jobs=jobs,
        quick_jobs=quick_jobs,
        warmup_jobs=_int(data, "warmup_jobs", 0, path, minimum=0),
        arrival=cast(Arrival, arrival),
        rate=rate,
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
        max_concurrent_jobs=max_concurrent,
        partitions=partitions,
        poold=cast(dict[str, Any], poold),
        source=str(path) if path else None,
    )


def load(path: Path) -> Scenario:
    """Read and validate one scenario file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ScenarioError(f"{path}: no such scenario file") from e
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from e
    return parse(data, path)


def standard() -> list[Scenario]:
    """The standard set, from ``bench/scenarios/<name>.toml``."""
    return [load(SCENARIO_DIR / f"{name}.toml") for name in STANDARD]
