"""The one retry policy: what is temporary is tried again, logged as "attempt n/N"."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from poold.config import RetrySettings
from poold.retry import RetryPolicy

log = structlog.get_logger("test")


async def test_a_temporary_failure_is_tried_again_and_each_retry_says_attempt_n_of_n() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionResetError(f"dropped {calls}")
        return "done"

    policy = RetryPolicy(attempts=3, backoff_s=0.001, backoff_max_s=0.002)
    with capture_logs() as logs:
        assert await policy.call(flaky, what="kafka: produce", retriable=lambda e: True,
                                 log=log) == "done"
    assert [(e["attempt"], e["error"]) for e in logs] == [("2/3", "dropped 1"),
                                                          ("3/3", "dropped 2")]
    assert all(e["event"] == "kafka: produce failed; trying again" for e in logs)


async def test_a_refusal_is_not_retried_and_the_last_error_is_raised_as_it_is() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise PermissionError("403: forbidden")

    policy = RetryPolicy.of(RetrySettings(backoff_s=0.001), attempts=5)
    with pytest.raises(PermissionError, match="403"):
        await policy.call(refused, what="kubernetes: create pod",
                          retriable=lambda e: not isinstance(e, PermissionError), log=log)
    assert calls == 1

    async def down() -> None:
        raise ConnectionRefusedError("refused")

    with pytest.raises(ConnectionRefusedError):
        await RetryPolicy(attempts=2, backoff_s=0, backoff_max_s=0).call(
            down, what="x", retriable=lambda e: True, log=log)


def test_pauses_double_up_to_the_cap_and_jitter_spreads_them() -> None:
    steady = RetryPolicy(attempts=None, backoff_s=0.5, backoff_max_s=30, jitter=0)
    assert [steady.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert steady.attempt(4) == "4/∞"
    spread = RetryPolicy(attempts=5, backoff_s=1, backoff_max_s=5)
    assert all(0.5 <= spread.delay(1) < 1.5 for _ in range(100))
    assert all(2.5 <= spread.delay(9) < 7.5 for _ in range(100))
