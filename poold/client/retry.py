"""When the client tries a call again, and how long it waits (tenacity).

Only calls that are safe to repeat are retried: GET (and HEAD), PUT of a
module (stored by content, so a repeat stores nothing new) and POST of a job
with the ``Idempotency-Key`` the client generates (a repeat gets the same
job). A call that is not safe to repeat (DELETE) is retried only when the
connection failed before anything was sent. Temporary means: the server could
not be reached, or answered 429, 502, 503 or 504; ``Retry-After`` is honoured
up to ``retry_after_max_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt

from poold import retry
from poold.client.errors import ApiError, ConnectionFailed, PooldError

log = logging.getLogger("poold.client")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy(retry.RetryPolicy):
    """poold's one retry policy (:mod:`poold.retry`) with the client's defaults,
    and how far a server's ``Retry-After`` is honoured."""

    #: attempts in all, the first included (1 = never retry)
    attempts: int = 4
    #: first pause, doubling up to ``backoff_max_s`` (seconds)
    backoff_s: float = 0.2
    backoff_max_s: float = 5.0
    #: spread of each pause, a fraction of it (0 = none)
    jitter: float = 0.0
    #: longest pause a server's Retry-After may ask for (seconds)
    retry_after_max_s: float = 10.0


def _should_retry(error: BaseException, *, safe: bool) -> bool:
    if not isinstance(error, PooldError):
        return False
    if safe:
        return error.retriable
    return isinstance(error, ConnectionFailed) and error.before_sending


async def call_with_retries(
    once: Callable[[], Awaitable[T]], *, policy: RetryPolicy, safe: bool, what: str
) -> T:
    def wait(state: RetryCallState) -> float:
        pause = policy.delay(state.attempt_number)
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, ApiError) and error.retry_after is not None:
            pause = max(pause, min(error.retry_after, policy.retry_after_max_s))
        return pause

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("%s; trying again (attempt %s)", error or what,
                    policy.attempt(state.attempt_number + 1))

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, policy.attempts)), wait=wait,
        retry=lambda state: bool(
            state.outcome and state.outcome.failed
            and _should_retry(state.outcome.exception(), safe=safe)
        ),
        before_sleep=before_sleep, reraise=True,
    )
    result: T = await retrying(once)
    return result
