"""A retry budget (as in Finagle and Envoy): failover may add at most `ratio` retries per
request, plus a trickle of `min_per_s` so a quiet gateway can still fail over. In an outage
that takes every backend down, each request then costs the survivors about one attempt, not
one per backend, and the load cannot multiply."""

from __future__ import annotations

import time
from collections.abc import Callable


class RetryBudget:
    def __init__(self, ratio: float, min_per_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ratio = ratio
        self._min_per_s = min_per_s
        self._clock = clock
        # Ten seconds of the trickle, or a hundred requests' worth of deposits.
        self._capacity = 10 * min_per_s + 100 * ratio
        self._tokens = self._capacity
        self._at = clock()

    def deposit(self) -> None:
        """One request came in: it earns `ratio` of a retry."""
        self._tokens = min(self._capacity, self._tokens + self._ratio)

    def withdraw(self) -> bool:
        """Whether one more attempt (a retry) may be made now."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._min_per_s)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
