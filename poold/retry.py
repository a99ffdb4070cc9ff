"""Trying again after a temporary failure: the one policy, through tenacity.

Kafka calls, Kubernetes API calls, the pod watch's reconnects and the pool's
pause after a worker failed to start all wait the same way: ``backoff_s``,
doubling per failure in a row up to ``backoff_max_s``, each pause spread by
``jitter`` (so replicas that failed together do not retry together). Every
retry logs one line, ``attempt="2/5"`` (``"2/∞"`` where there is no limit),
with what failed and why. Only what is known to be temporary is retried:
the caller says which errors are (``retriable``).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
)

if TYPE_CHECKING:  # the client uses this module too, without the daemon's settings
    from poold.config import RetrySettings

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int | None
    """Attempts in all, the first included; None: until it succeeds or is cancelled."""
    backoff_s: float
    """Pause after the first failure, in seconds; doubles per failure in a row."""
    backoff_max_s: float
    """Longest pause."""
    jitter: float = 0.5
    """Each pause is multiplied by a random factor in [1 - jitter, 1 + jitter)."""

    @classmethod
    def of(cls, settings: RetrySettings, *, attempts: int | None) -> RetryPolicy:
        return cls(attempts=attempts, backoff_s=settings.backoff_s,
                   backoff_max_s=settings.backoff_max_s)

    def forever(self) -> RetryPolicy:
        """The same pauses with no limit on attempts (a watch, a pool)."""
        return replace(self, attempts=None)

    def delay(self, failures: int) -> float:
        """The pause after ``failures`` failures in a row (1 or more)."""
        pause = min(self.backoff_max_s, self.backoff_s * 2.0 ** max(0, failures - 1))
        if self.jitter:
            pause *= 1 - self.jitter + 2 * self.jitter * random.random()  # noqa: S311
        return pause

    def attempt(self, number: int) -> str:
        """``"2/5"``: how the log names an attempt."""
        return f"{number}/{'∞' if self.attempts is None else self.attempts}"

    async def call(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        what: str,
        retriable: Callable[[BaseException], bool],
        log: Any,
    ) -> T:
        """``call()`` until it succeeds, fails for a reason ``retriable`` refuses, or
        runs out of attempts; then its last error is raised as it is."""
        result: T = await self.retrying(what=what, retriable=retriable, log=log)(call)
        return result

    def retrying(
        self, *, what: str, retriable: Callable[[BaseException], bool], log: Any
    ) -> AsyncRetrying:
        """The same as :meth:`call`, for ``async for attempt in ...: with attempt:``."""

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            self.log_retry(log, what=what, attempt=state.attempt_number + 1, error=error,
                           pause_s=state.upcoming_sleep)

        return AsyncRetrying(
            stop=stop_never if self.attempts is None else stop_after_attempt(self.attempts),
            wait=lambda state: self.delay(state.attempt_number),
            retry=retry_if_exception(retriable),
            before_sleep=before_sleep,
            reraise=True,
        )

    def log_retry(
        self, log: Any, *, what: str, attempt: int, error: BaseException | str | None,
        pause_s: float,
    ) -> None:
        """The one line every retry logs, loops that wait by themselves included."""
        reason = error if isinstance(error, str) or error is None else (str(error) or repr(error))
        log.warning("%s failed; trying again", what, attempt=self.attempt(attempt),
                    error=reason, pause_s=round(pause_s, 3))
