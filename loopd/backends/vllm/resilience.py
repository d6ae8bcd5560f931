"""Retry timing and a circuit breaker for talking to model servers over HTTP.

Pure logic: the clock and the random source are passed in, so the unit tests drive time
without sleeping (``tests/test_vllm_unit.py``). The vLLM backend keeps one breaker per
endpoint and one ``Backoff`` per config.

Why both: retries with backoff ride out a short stall or a server restart without
failing a request; the breaker stops a dead endpoint from costing every caller its full
retry budget (callers fail fast, or go to another replica, until a trial request after
``reset_s`` shows the endpoint is back).
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with proportional jitter.

    Delay before retry ``attempt`` (0-based) is ``min(max_s, initial_s * multiplier**attempt)``
    scaled by a random factor in ``[1 - jitter, 1]``: jitter spreads the retries of many
    clients so a restarted server is not hit by all of them in the same millisecond.
    """

    initial_s: float = 0.2
    max_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        capped = min(self.max_s, self.initial_s * self.multiplier ** max(0, attempt))
        draw = (rng or random).random()
        return capped * (1.0 - self.jitter * draw)


class BreakerState(enum.IntEnum):
    """Gauge values: 0 closed (normal), 1 half-open (one trial allowed), 2 open (refuse)."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass
class CircuitBreaker:
    """Consecutive-failure breaker: ``threshold`` failures open it for ``reset_s``.

    After ``reset_s`` one trial call is let through (half-open); its success closes the
    breaker, its failure opens it again for another ``reset_s``. ``on_change`` hears every
    transition (the backend turns them into events and a gauge).
    """

    threshold: int = 5
    reset_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    on_change: Callable[[BreakerState, BreakerState], None] | None = None
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    _trial_in_flight: bool = field(default=False, repr=False)

    def allow(self) -> bool:
        """May a call go out now? Half-open admits exactly one trial at a time."""
        if self.state is BreakerState.OPEN:
            if self.clock() - self.opened_at < self.reset_s:
                return False
            self._set(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            if self._trial_in_flight:
                return False
            self._trial_in_flight = True
        return True

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a trial through (0 when it would now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.reset_s - (self.clock() - self.opened_at))

    def record_success(self) -> None:
        self.failures = 0
        self._trial_in_flight = False
        if self.state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self.failures += 1
        self._trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.opened_at = self.clock()
            if self.state is not BreakerState.OPEN:
                self._set(BreakerState.OPEN)

    def release(self) -> None:
        """A call that proved nothing either way (e.g. a 4xx) frees the half-open trial."""
        self._trial_in_flight = False

    def _set(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        if self.on_change is not None:
            self.on_change(old, new)
