"""Per-brain health: a circuit breaker, and the events that tell the rest of the robot which brain is answering.

closed ──(N failures in a row, or one timeout / rejection)──► open ──(open time passed)──► half-open
  ▲                                                                                        │
  └──────────────────────(a probe or a real turn succeeds)──────────────────────────────────┘
                                          a failure while half-open re-opens it for twice as long (capped)
"""

from __future__ import annotations

import enum

import trio

from appliance.errors import ProviderError, ProviderRejected, ProviderTimeout
from appliance.settings.brains import FailoverConfig


class Circuit(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Condition(enum.StrEnum):
    """What a status display says of a brain: the circuit alone would call a brain nobody tried healthy."""

    UNKNOWN = "unknown"  # neither a probe nor a turn has answered yet
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # it failed lately, but fewer times than opening its circuit takes
    UNHEALTHY = "unhealthy"  # circuit open (or half-open, on trial)


class CircuitBreaker:
    def __init__(self, config: FailoverConfig) -> None:
        self.config = config
        self.state = Circuit.CLOSED
        self.known = False  # a probe or a turn has told us anything yet
        self.failures = 0
        self.open_for = config.open_initial
        self.opened_at = 0.0
        self.last_error: ProviderError | None = None

    @property
    def healthy(self) -> bool:
        return self.state is Circuit.CLOSED

    @property
    def condition(self) -> Condition:
        if self.state is not Circuit.CLOSED:
            return Condition.UNHEALTHY
        if self.failures:
            return Condition.DEGRADED
        return Condition.HEALTHY if self.known else Condition.UNKNOWN

    def due(self, now: float) -> bool:
        """An open circuit whose open time has passed: time to probe it."""
        return self.state is Circuit.OPEN and now >= self.opened_at + self.open_for

    def usable(self, now: float) -> bool:
        if self.due(now):
            self.state = Circuit.HALF_OPEN
        return self.state is not Circuit.OPEN

    def success(self) -> bool:
        """Record a success; True when this closed the circuit (the brain recovered)."""
        recovered = self.state is not Circuit.CLOSED
        self.known = True
        self.state = Circuit.CLOSED
        self.failures = 0
        self.open_for = self.config.open_initial
        self.last_error = None
        return recovered

    def failure(self, error: ProviderError) -> bool:
        """Record a failure; True when this opened the circuit."""
        self.failures += 1
        self.known = True
        self.last_error = error
        now = trio.current_time()
        if self.state is Circuit.HALF_OPEN or self.state is Circuit.OPEN:
            self.open_for = min(self.open_for * 2, self.config.open_max)
            self._open(now, error)
            return False
        immediate = isinstance(error, ProviderTimeout | ProviderRejected) or error.retry_after is not None
        if immediate or self.failures >= self.config.failure_threshold:
            self._open(now, error)
            return True
        return False

    def _open(self, now: float, error: ProviderError) -> None:
        self.state = Circuit.OPEN
        self.opened_at = now
        if error.retry_after is not None:
            self.open_for = min(max(self.open_for, error.retry_after), self.config.open_max)
