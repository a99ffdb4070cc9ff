"""What the client raises: one base class, and one subclass per kind of answer.

Every error carries whether trying again may help (``retriable``), as
aiokafka's errors do; the client itself retries only calls that are safe to
repeat (see :mod:`poold.client.retry`).
"""

from __future__ import annotations

from poold.errors import Error


class PooldError(Error):
    """Base of every error the client raises."""

    retriable: bool = False


class ApiError(PooldError):
    """The server answered with an error status; ``message`` is its sentence."""

    def __init__(
        self, *, status: int, message: str, method: str, path: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.message = message
        self.method = method
        self.path = path
        self.retry_after = retry_after

    @property
    def retriable(self) -> bool:  # type: ignore[override]
        return self.status in RETRIABLE_STATUSES


#: 429 and the 5xx that mean "not now" rather than "not ever".
RETRIABLE_STATUSES = frozenset({429, 502, 503, 504})


class BadRequest(ApiError):
    """400, 413, 422: the request itself was wrong (the message says how)."""


class Unauthorized(ApiError):
    """401: no token, or a token that is not valid for any tenant."""


class Forbidden(ApiError):
    """403: the token is valid but may not do this."""


class NotFound(ApiError):
    """404: no such job, module, artifact or route (another tenant's job included)."""


class Conflict(ApiError):
    """409: the job is not in a state that allows this (e.g. cancelling an ended job)."""


class Gone(ApiError):
    """410: the job ended longer ago than the server keeps jobs."""


class TooManyRequests(ApiError):
    """429: the tenant's queue is full; ``retry_after`` says when to try again."""


class ServerError(ApiError):
    """5xx: the server failed or is unavailable (503 while Kafka is down or it drains)."""


class ConnectionFailed(PooldError):
    """The server could not be reached, or the connection broke mid-answer."""

    retriable = True

    def __init__(self, message: str, *, before_sending: bool = False) -> None:
        super().__init__(message)
        #: True when nothing reached the server (refused, unresolvable, connect timeout)
        self.before_sending = before_sending


class RequestTimeout(PooldError, TimeoutError):
    """A call did not finish within its timeout."""

    retriable = True


class JobWaitTimeout(PooldError, TimeoutError):
    """``wait`` gave up before the job ended; the job itself goes on."""


class ConfigError(PooldError):
    """The client configuration (contexts file, token file, URL) is unusable."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 413: BadRequest, 422: BadRequest, 401: Unauthorized, 403: Forbidden,
    404: NotFound, 409: Conflict, 410: Gone, 429: TooManyRequests,
}


def error_for(
    *, status: int, message: str, method: str, path: str, retry_after: float | None = None
) -> ApiError:
    """The most specific :class:`ApiError` subclass for an HTTP status."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(status=status, message=message, method=method, path=path,
               retry_after=retry_after)
