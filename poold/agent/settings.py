"""The agent's settings, from its environment (pod env or the local backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from poold.config import ConfigError


class AgentConfigError(ConfigError):
    """The agent's environment cannot be used; ``str()`` names the variable."""


@dataclass(frozen=True)
class AgentSettings:
    slot: Path
    """This worker's slot: ``in/`` and ``out/`` (its own subPath of the shared volume)."""
    kafka: str
    """Broker addresses for the job's input and output partitions."""
    cache: Path
    """Compiled-module cache shared by all workers."""
    host: str = "0.0.0.0"
    """Where the agent's small HTTP endpoint (ready, nudge, events, cancel) listens."""
    port: int = 8081
    poll_interval_s: float = 0.2
    """How often to look for ``in/job.json`` when no nudge comes."""
    max_log_bytes: int = 8 * 1024 * 1024
    linger_s: float = 300.0
    """How long a finished agent waits to be deleted before it exits by itself."""
    engine: str = "wasmtime"
    ready_fd: int | None = None
    """Local backend only: a pipe to announce readiness on."""
    pod: str = ""
    fsync: bool = True
    """fsync result files before renaming them (needed on NFS)."""
    rss_source: str = "proc"
    """Where a job's peak resident memory is read: ``proc`` (this process, from
    /proc) or ``cgroup`` (the container's cgroup v2 ``memory.peak``; runner pods)."""
    token: str = ""
    """The secret every request to the agent must carry (``Authorization: Bearer``),
    made by poold for this worker alone (``POOLD_AGENT_TOKEN``)."""
    max_out_bytes: int = 256 * 1024 * 1024
    """What a job may leave under /out (``runtime.max_artifacts_mb``)."""
    max_out_files: int = 1000
    """Files and folders a job may make under /out (``runtime.max_artifact_files``)."""
    max_output_bytes: int = 1024 * 1024 * 1024
    """stdout a job may send to Kafka (``runtime.max_output_mb``)."""
    max_output_records: int = 1_000_000
    """stdout lines a job may send to Kafka (``runtime.max_output_records``)."""
    parent_pid: int | None = None
    """Local backend only: the fork server. The agent stops when its parent changes
    (the fork server, and so poold, is gone), in case no death signal reached it."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentSettings:
        env = os.environ if env is None else env

        def need(key: str) -> str:
            value = env.get(key)
            if not value:
                raise AgentConfigError(f"the agent needs the environment variable {key}")
            return value

        try:
            ready_fd = env.get("POOLD_AGENT_READY_FD")
            parent = env.get("POOLD_AGENT_PARENT_PID")
            return cls(
                slot=Path(need("POOLD_AGENT_SLOT")),
                kafka=need("POOLD_AGENT_KAFKA"),
                cache=Path(need("POOLD_AGENT_CACHE")),
                host=env.get("POOLD_AGENT_HOST", "0.0.0.0"),
                port=int(env.get("POOLD_AGENT_PORT", "8081")),
                poll_interval_s=float(env.get("POOLD_AGENT_POLL_S", "0.2")),
                max_log_bytes=int(env.get("POOLD_AGENT_MAX_LOG_KB", "8192")) * 1024,
                linger_s=float(env.get("POOLD_AGENT_LINGER_S", "300")),
                engine=env.get("POOLD_AGENT_ENGINE", "wasmtime"),
                ready_fd=int(ready_fd) if ready_fd else None,
                pod=env.get("POOLD_AGENT_POD", env.get("POD_NAME", "")),
                fsync=env.get("POOLD_AGENT_FSYNC", "1") not in {"0", "false", "no"},
                rss_source=_choice(env, "POOLD_AGENT_RSS", ("proc", "cgroup")),
                parent_pid=int(parent) if parent else None,
                max_out_bytes=int(env.get("POOLD_AGENT_MAX_OUT_MB", "256")) * 1024 * 1024,
                max_out_files=int(env.get("POOLD_AGENT_MAX_OUT_FILES", "1000")),
                max_output_bytes=int(env.get("POOLD_AGENT_MAX_OUTPUT_MB", "1024")) * 1024 * 1024,
                max_output_records=int(env.get("POOLD_AGENT_MAX_OUTPUT_RECORDS", "1000000")),
                token=need("POOLD_AGENT_TOKEN"),
            )
        except ValueError as e:
            raise AgentConfigError(f"bad agent setting in the environment: {e}") from e


def _choice(env: Mapping[str, str], key: str, allowed: tuple[str, ...]) -> str:
    value = env.get(key, allowed[0])
    if value not in allowed:
        raise AgentConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    return value
