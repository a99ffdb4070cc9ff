"""Kubernetes ``Status`` errors as raised inside the fake API server.

The store and the HTTP layer share one exception type so that every failure
reaches the client in the exact shape the real API server uses (``kind:
Status``); kubernetes-asyncio builds its ``ApiException`` from the HTTP status
and keeps the body, so backends that inspect ``exc.status`` or parse
``exc.body`` for ``reason`` behave as they would against a real cluster.
"""

from __future__ import annotations

from typing import Any

_DEFAULT_REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def default_reason(code: int) -> str:
    """The ``reason`` the real API server pairs with an HTTP code."""
    return _DEFAULT_REASONS.get(code, "Unknown" if code >= 400 else "")


class StatusError(Exception):
    """A failure that is reported to the client as a ``Status`` object."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        *,
        name: str | None = None,
        kind: str | None = None,
        group: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or default_reason(code)
        self.name = name
        self.kind = kind
        self.group = group
        self.retry_after = retry_after

    def to_status(self) -> dict[str, Any]:
        """The JSON body, shaped like ``metav1.Status``."""
        return status_object(
            self.code,
            self.message,
            self.reason,
            name=self.name,
            kind=self.kind,
            group=self.group,
            retry_after=self.retry_after,
        )


def status_object(
    code: int,
    message: str,
    reason: str | None = None,
    *,
    name: str | None = None,
    kind: str | None = None,
    group: str | None = None,
    retry_after: int | None = None,
) -> dict[str, Any]:
    """Build a failure ``Status`` the way the API server serialises it."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or default_reason(code),
        "code": code,
    }
    details: dict[str, Any] = {}
    if name is not None:
        details["name"] = name
    if group:
        details["group"] = group
    if kind is not None:
        details["kind"] = kind
    if retry_after is not None:
        details["retryAfterSeconds"] = retry_after
    if details:
        body["details"] = details
    return body


def not_found(plural: str, name: str, group: str = "") -> StatusError:
    """``404 NotFound`` with the real message format."""
    res = f"{plural}.{group}" if group else plural
    return StatusError(404, f'{res} "{name}" not found', name=name, kind=plural, group=group)


def already_exists(plural: str, name: str, group: str = "") -> StatusError:
    """``409 AlreadyExists`` (create of an existing name)."""
    res = f"{plural}.{group}" if group else plural
    return StatusError(
        409, f'{res} "{name}" already exists', "AlreadyExists", name=name, kind=plural, group=group
    )


def conflict(plural: str, name: str, detail: str, group: str = "") -> StatusError:
    """``409 Conflict``: an optimistic-concurrency or precondition failure."""
    res = f"{plural}.{group}" if group else plural
    return StatusError(
        409,
        f'Operation cannot be fulfilled on {res} "{name}": {detail}',
        "Conflict",
        name=name,
        kind=plural,
        group=group,
    )


STALE_DETAIL = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def invalid(kind: str, name: str, detail: str) -> StatusError:
    """``422 Invalid``: the object failed validation."""
    return StatusError(
        422, f'{kind} "{name}" is invalid: {detail}', "Invalid", name=name, kind=kind
    )


def bad_request(message: str) -> StatusError:
    """``400 BadRequest``: the request itself could not be understood."""
    return StatusError(400, message, "BadRequest")
