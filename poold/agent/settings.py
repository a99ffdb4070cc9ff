"""The agent's settings: a pydantic model, read from its environment.

The agent runs in a runner pod or as a local worker, so its settings arrive as
``POOLD_AGENT_*`` variables. :data:`VARIABLES` names each field's variable
once, for both directions: :meth:`AgentSettings.from_env` reads them (the
agent), :func:`agent_env` writes the ones poold's own config decides (the
daemon, for local workers and runner pods alike), so the two cannot drift.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from poold.config import ConfigError, Settings, explain

MIB = 1024 * 1024


class AgentConfigError(ConfigError):
    """The agent's environment cannot be used; ``str()`` names the variable."""


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    slot: Path
    """This worker's slot: ``in/`` and ``out/`` (its own subPath of the shared volume)."""
    kafka: str
    """Broker addresses for the job's input and output partitions."""
    cache: Path
    """Compiled-module cache shared by all workers."""
    host: str = "0.0.0.0"
    """Where the agent's small HTTP endpoint (ready, nudge, events, cancel) listens."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8081
    poll_interval_s: Annotated[float, Field(gt=0)] = 0.2
    """How often to look for ``in/job.json`` when no nudge comes."""
    max_log_bytes: Annotated[int, Field(ge=1)] = 8 * 1024 * 1024
    linger_s: Annotated[float, Field(ge=0)] = 300.0
    """How long a finished agent waits to be deleted before it exits by itself."""
    engine: str = "wasmtime"
    ready_fd: int | None = None
    """Local backend only: a pipe to announce readiness on."""
    pod: str = ""
    fsync: bool = True
    """fsync result files before renaming them (needed on NFS)."""
    rss_source: Literal["proc", "cgroup"] = "proc"
    """Where a job's peak resident memory is read: ``proc`` (this process, from
    /proc) or ``cgroup`` (the container's cgroup v2 ``memory.peak``; runner pods)."""
    token: str = ""
    """The secret every request to the agent must carry (``Authorization: Bearer``),
    made by poold for this worker alone (``POOLD_AGENT_TOKEN``)."""
    max_out_bytes: Annotated[int, Field(ge=0)] = 256 * MIB
    """What a job may leave under /out (``runtime.max_artifacts_mb``)."""
    max_out_files: Annotated[int, Field(ge=0)] = 1000
    """Files and folders a job may make under /out (``runtime.max_artifact_files``)."""
    max_output_bytes: Annotated[int, Field(ge=0)] = 1024 * MIB
    """stdout a job may send to Kafka (``runtime.max_output_mb``)."""
    max_output_records: Annotated[int, Field(ge=0)] = 1_000_000
    """stdout lines a job may send to Kafka (``runtime.max_output_records``)."""
    runtimes: Path | None = None
    """Runner pods: where the operator's runtimes appear (``POOLD_AGENT_RUNTIMES``, the
    read-only mount of ``<slots.root>/runtimes`` that poold adds to the pod template).
    A runtime job's document names its interpreter and mounts relative to this
    folder, and ``compiled/`` under it is a read-only second compile cache. Unset
    (the local backend): a job document names host paths and the module is in the slot."""
    parent_pid: int | None = None
    """Local backend only: the fork server. The agent stops when its parent changes
    (the fork server, and so poold, is gone), in case no death signal reached it."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentSettings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field, (variable, unit) in VARIABLES.items():
            text = env.get(variable, "")
            if field == "pod" and not text:
                text = env.get("POD_NAME", "")  # the downward API's usual name
            if not text:
                if field in REQUIRED:
                    raise AgentConfigError(f"the agent needs the environment variable {variable}")
                continue
            if unit == 1:
                values[field] = text
                continue
            try:
                values[field] = int(text) * unit
            except ValueError:
                raise AgentConfigError(
                    f"{variable}={text!r} is not a whole number") from None
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            sentences = explain(e, key=lambda loc: VARIABLES[str(loc[0])][0] if loc else None)
            raise AgentConfigError(
                "bad agent setting in the environment: " + "; ".join(sentences)) from e


VARIABLES: dict[str, tuple[str, int]] = {
    "slot": ("POOLD_AGENT_SLOT", 1),
    "kafka": ("POOLD_AGENT_KAFKA", 1),
    "cache": ("POOLD_AGENT_CACHE", 1),
    "host": ("POOLD_AGENT_HOST", 1),
    "port": ("POOLD_AGENT_PORT", 1),
    "poll_interval_s": ("POOLD_AGENT_POLL_S", 1),
    "max_log_bytes": ("POOLD_AGENT_MAX_LOG_KB", 1024),
    "linger_s": ("POOLD_AGENT_LINGER_S", 1),
    "engine": ("POOLD_AGENT_ENGINE", 1),
    "ready_fd": ("POOLD_AGENT_READY_FD", 1),
    "pod": ("POOLD_AGENT_POD", 1),
    "fsync": ("POOLD_AGENT_FSYNC", 1),
    "rss_source": ("POOLD_AGENT_RSS", 1),
    "token": ("POOLD_AGENT_TOKEN", 1),
    "max_out_bytes": ("POOLD_AGENT_MAX_OUT_MB", MIB),
    "max_out_files": ("POOLD_AGENT_MAX_OUT_FILES", 1),
    "max_output_bytes": ("POOLD_AGENT_MAX_OUTPUT_MB", MIB),
    "max_output_records": ("POOLD_AGENT_MAX_OUTPUT_RECORDS", 1),
    "parent_pid": ("POOLD_AGENT_PARENT_PID", 1),
    "runtimes": ("POOLD_AGENT_RUNTIMES", 1),
}
"""Each field's environment variable and its unit (a variable in KiB or MiB holds
the field's bytes divided by it)."""
REQUIRED = frozenset({"slot", "kafka", "cache", "token"})


def agent_env(settings: Settings, **more: Any) -> dict[str, str]:
    """The ``POOLD_AGENT_*`` variables poold's config decides, with ``more`` (any
    other field, ``kafka=...``) on top: what every worker's environment gets."""
    runtime = settings.runtime
    fields: dict[str, Any] = {
        "poll_interval_s": runtime.poll_interval_s,
        "max_log_bytes": runtime.max_log_kb * 1024,
        "max_out_bytes": runtime.max_artifacts_mb * MIB,
        "max_out_files": runtime.max_artifact_files,
        "max_output_bytes": runtime.max_output_mb * MIB,
        "max_output_records": runtime.max_output_records,
        "engine": runtime.engine,
        "fsync": settings.slots.fsync,
        "linger_s": settings.pool.agent_linger_s,
        **more,
    }
    env = {}
    for field, value in fields.items():
        variable, unit = VARIABLES[field]
        if isinstance(value, bool):
            env[variable] = "1" if value else "0"
        elif unit != 1:
            env[variable] = str(int(value) // unit)
        else:
            env[variable] = str(value)
    return env
