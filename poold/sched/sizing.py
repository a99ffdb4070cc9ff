"""How many idle workers to keep when ``pool.min_idle = "auto"``.

A job that arrives to an empty pool waits for a worker to start. While a
replacement starts (its start time, ``s``), jobs keep arriving at rate ``λ``:
by Little's law ``λ·s`` of them arrive during one start, so that many idle
workers cover the gap. Arrivals are bursty (Poisson at best), so the count in
``s`` seconds varies by about ``√(λ·s)``; the target adds ``margin`` of those
standard deviations (square-root staffing):

    need   = λ · s
    target = ceil(need + margin · √need)      bounded to [floor, max_pods]

``λ`` is the larger of two measured rates: a short window sees a burst within
a second, a long window keeps the pool while a burst pauses. ``s`` is the p90
of recent worker start times. The target rises at once; it falls only when
the need drops below the current target by more than ``hysteresis`` (a
fraction), so a steady rate whose need sits on an integer boundary does not
make the pool grow and shrink in turn. Idle workers beyond the target are
retired only after ``pool.idle_ttl_s`` idle (see :mod:`poold.sched.pool`),
which damps it further.

:func:`decide` is pure (tested on its own); :class:`DemandMeter` measures the
inputs with an injectable clock.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import structlog

log = structlog.get_logger(__name__)

SHORT_WINDOW_S = 2.0
"""Arrivals counted for the short rate: half a second of a burst already lifts it."""
LONG_WINDOW_S = 10.0
"""Arrivals counted for the long rate: holds the pool through a pause in a
burst, yet short enough that an idle pool is back at its floor within
``idle_ttl_s`` + 10 s after the load stops."""
MARGIN = 2.0
"""Standard deviations of the arrival count added to the need (≈98 % of
Poisson counts fall within need + 2·√need)."""
HYSTERESIS = 0.25
"""The target falls only when the need with this fraction added is below it."""
DEFAULT_START_S = 1.0
"""Start time assumed before any worker has started (the local backend starts
one in well under that; a pod in a few seconds, which the p90 then shows)."""
START_SAMPLES = 50
"""Recent worker start times the p90 is taken over."""
RETIRE_JITTER = 0.1
"""Each surplus worker waits ``idle_ttl_s`` plus up to this fraction more (fixed
per worker), so workers that became idle together do not all go at once."""
AUTO_IDLE_TTL_S = 30.0
"""With ``min_idle = "auto"`` and ``idle_ttl_s = 0``: how long a surplus worker
stays idle before it is retired (auto sizing must be able to shrink)."""
MAX_ARRIVALS = 100_000
"""Arrival times kept at most (bounds memory at very high rates; beyond it the
long rate is underestimated, which the short rate covers)."""


class Bound(StrEnum):
    """What decided the target, for ``GET /v1/pool`` and the logs."""

    NEED = "need"
    FLOOR = "floor"
    MAX_PODS = "max_pods"
    HYSTERESIS = "hysteresis"


@dataclass(frozen=True)
class SizingInputs:
    short_rate: float
    """Arrivals per second over :data:`SHORT_WINDOW_S`."""
    long_rate: float
    """Arrivals per second over :data:`LONG_WINDOW_S`."""
    start_p90_s: float
    """p90 of recent worker start times, in seconds."""
    floor: int
    """``pool.min_idle_floor``: idle workers kept even with no arrivals."""
    max_pods: int
    """``pool.max_pods``: the target never exceeds it."""
    previous: int
    """The target of the last decision (``floor`` for the first)."""
    margin: float = MARGIN
    hysteresis: float = HYSTERESIS


@dataclass(frozen=True)
class Decision:
    target: int
    """Idle workers to keep."""
    rate: float
    """The arrival rate used (per second): the larger of the two windows."""
    need: float
    """``rate * start_p90_s``: arrivals expected while one worker starts."""
    start_p90_s: float
    margin: float
    bound: Bound
    """What decided ``target``: the need, the floor, max_pods, or hysteresis
    (kept at the previous target)."""

    def reason(self) -> str:
        return (
            f"rate {self.rate:.2f}/s * start p90 {self.start_p90_s:.2f} s = need "
            f"{self.need:.2f}, + {self.margin:g}·√need → {self.target} ({self.bound.value})"
        )


def decide(inputs: SizingInputs) -> Decision:
    """The idle target for ``inputs``; see the module docstring for the formula."""
    rate = max(inputs.short_rate, inputs.long_rate, 0.0)
    start = max(inputs.start_p90_s, 0.0)
    need = rate * start

    def bounded(value: float) -> tuple[int, Bound]:
        wanted = math.ceil(value + inputs.margin * math.sqrt(value)) if value > 0 else 0
        if wanted >= inputs.max_pods:
            return inputs.max_pods, Bound.MAX_PODS
        if wanted <= inputs.floor:
            return min(inputs.floor, inputs.max_pods), Bound.FLOOR
        return wanted, Bound.NEED

    up, bound = bounded(need)
    if up < inputs.previous:
        # falling: only as far as the need with the hysteresis band added allows
        damped, damped_bound = bounded(need * (1 + inputs.hysteresis))
        if damped >= inputs.previous:
            target, bound = min(inputs.previous, inputs.max_pods), Bound.HYSTERESIS
            if target == inputs.max_pods:
                bound = Bound.MAX_PODS
        else:
            target, bound = damped, damped_bound
    else:
        target = up
    return Decision(target=target, rate=rate, need=need, start_p90_s=start,
                    margin=inputs.margin, bound=bound)


class DemandMeter:
    """Arrivals and worker start times, as :func:`decide` needs them."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._arrivals: deque[float] = deque(maxlen=MAX_ARRIVALS)
        self._starts: deque[float] = deque(maxlen=START_SAMPLES)

    def arrived(self, count: int = 1) -> None:
        now = self.clock()
        self._arrivals.extend([now] * count)

    def started(self, seconds: float) -> None:
        self._starts.append(max(0.0, seconds))

    def rates(self) -> tuple[float, float]:
        """Arrivals per second over the short and the long window."""
        now = self.clock()
        while self._arrivals and self._arrivals[0] <= now - LONG_WINDOW_S:
            self._arrivals.popleft()
        short = 0
        for t in reversed(self._arrivals):  # newest first: stop at the window's edge
            if t <= now - SHORT_WINDOW_S:
                break
            short += 1
        return short / SHORT_WINDOW_S, len(self._arrivals) / LONG_WINDOW_S

    def start_p90(self) -> float:
        if not self._starts:
            return DEFAULT_START_S
        ordered = sorted(self._starts)
        return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


def jitter(pod: str) -> float:
    """A worker's own fraction of :data:`RETIRE_JITTER`, the same at every pass."""
    return RETIRE_JITTER * (zlib.crc32(pod.encode()) % 1000) / 1000


def retirable(
    idle: Sequence[tuple[str, float]], *, surplus: int, ttl_s: float, now: float
) -> tuple[list[str], float | None]:
    """Which idle workers to retire: of ``idle`` (pod, idle since), the ``surplus``
    that have been idle longest, each once it has been idle ``ttl_s`` plus its
    jitter. Also when the next of those falls due (None if none waits)."""
    if surplus <= 0 or ttl_s <= 0:
        return [], None
    due: list[str] = []
    waiting: list[float] = []
    for pod, since in sorted(idle, key=lambda item: item[1])[:surplus]:
        at = since + ttl_s * (1 + jitter(pod))
        if now >= at:
            due.append(pod)
        else:
            waiting.append(at)
    return due, min(waiting, default=None)


class Sizer:
    """The pool's idle target: ``pool.min_idle`` when it is a number, else
    :func:`decide` on what :class:`DemandMeter` measured (keeping the last
    decision for the hysteresis). Also times worker starts on the same clock."""

    MAX_PENDING = 1024
    """Creations remembered while waiting for their ready event (a worker that
    never becomes ready is forgotten once this many newer ones started)."""
    LOG_EVERY_S = 10.0
    """At a steady Poisson rate the target can move by one every second or so: an
    info line at most this often (with how many changes it stands for), the others
    at debug. ``GET /v1/pool`` and ``poold_pool_idle_target`` always show the value."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.meter = DemandMeter(clock=clock)
        self._previous: int | None = None
        self._pending: dict[str, float] = {}
        self.last: Decision | None = None
        self._logged_at: float | None = None
        self._unlogged = 0

    def creating(self, pod: str) -> None:
        self._pending[pod] = self.meter.clock()
        if len(self._pending) > self.MAX_PENDING:
            del self._pending[next(iter(self._pending))]

    def ready(self, pod: str) -> None:
        created = self._pending.pop(pod, None)
        if created is not None:
            self.meter.started(self.meter.clock() - created)

    def idle_target(self, *, min_idle: int | str, floor: int, max_pods: int) -> int:
        if min_idle != "auto":
            self.last = None
            self._previous = None
            return int(min_idle)
        short, long = self.meter.rates()
        decision = decide(SizingInputs(
            short_rate=short, long_rate=long, start_p90_s=self.meter.start_p90(),
            floor=floor, max_pods=max_pods,
            previous=floor if self._previous is None else self._previous,
        ))
        if self.last is None or decision.target != self.last.target:
            self._note_change(decision)
        self._previous, self.last = decision.target, decision
        return decision.target

    def _note_change(self, decision: Decision) -> None:
        now = self.meter.clock()
        self._unlogged += 1
        if self._logged_at is not None and now - self._logged_at < self.LOG_EVERY_S:
            log.debug("idle target changed", target=decision.target, reason=decision.reason())
            return
        log.info("idle target changed", target=decision.target, reason=decision.reason(),
                 changes=self._unlogged)
        self._logged_at, self._unlogged = now, 0

    def figures(self) -> dict[str, object]:
        """The inputs and the outcome of the last decision (``GET /v1/pool``)."""
        short, long = self.meter.rates()
        out: dict[str, object] = {
            "arrival_rate_short_per_s": round(short, 3),
            "arrival_rate_long_per_s": round(long, 3),
            "start_p90_s": round(self.meter.start_p90(), 3),
            "margin": MARGIN,
            "hysteresis": HYSTERESIS,
        }
        if self.last is not None:
            out.update(need=round(self.last.need, 3), bound=self.last.bound.value,
                       reason=self.last.reason())
        return out
