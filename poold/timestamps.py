"""Wall-clock times as poold writes and reads them: UTC, RFC 3339 with a ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def rfc3339(when: datetime) -> str: ...
@overload
def rfc3339(when: None) -> None: ...
def rfc3339(when: datetime | None) -> str | None:
    """``2026-11-29T08:00:00.000000Z``: what the API, the journal and Kubernetes take."""
    if when is None:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> datetime:
    """The inverse of :func:`rfc3339` (any offset, or ``Z``); ValueError if it is not one."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
