"""Identifiers and small shared types, kept apart so they cannot be mixed up."""

from __future__ import annotations

import secrets
from typing import NewType

JobId = NewType("JobId", str)
PodName = NewType("PodName", str)
TenantName = NewType("TenantName", str)
ModuleHash = NewType("ModuleHash", str)


def new_job_id() -> JobId:
    """128 random bits, URL-safe: unguessable, so a job id is not a capability leak."""
    return JobId("j-" + secrets.token_hex(16))


def new_pod_name(prefix: str = "poold-w") -> PodName:
    return PodName(f"{prefix}-{secrets.token_hex(5)}")
