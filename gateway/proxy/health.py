"""What the gateway knows of each backend from its own traffic (and, where configured, from
active probes): requests in flight, failures in a row, and until when it is left alone.

Passive health is circuit breaking without a separate state machine: `eject_after_failures`
failures in a row eject a backend for `eject_for_s`; when that passes it is tried again
(half-open) with its count kept, so one more failure ejects it again at once and one success
closes the circuit. A 429, or a 503 that says `Retry-After`, is the backend asking for rest,
not a fault: it is not counted toward ejection, and the backend gets no request until then.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.settings import RoutingSettings

log = get_logger("veil.health")

Unusable = Literal["ejected", "resting", "probe_failed"]


@dataclass
class BackendState:
    in_flight: int = 0
    failures: int = 0  # in a row
    ejected_until: float = 0.0
    resting_until: float = 0.0  # asked by Retry-After
    rested_by: int = 0  # the status that asked (429 or 503)
    probe_failed: bool = False


class Health:
    def __init__(self, names: Iterable[str], routing: RoutingSettings, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._routing = routing
        self._metrics = metrics
        self._clock = clock
        self._states = {name: BackendState() for name in names}
        for name in self._states:
            metrics.backend_up.labels(name).set(1)

    def state(self, name: str) -> BackendState:
        return self._states[name]

    def why_unusable(self, name: str) -> Unusable | None:
        state, now = self._states[name], self._clock()
        if state.resting_until > now:
            return "resting"
        if state.ejected_until > now:
            return "ejected"
        if state.probe_failed:
            return "probe_failed"
        return None

    def rest_left_s(self, names: Iterable[str]) -> float | None:
        """The soonest any of these backends may be asked again, if every one is resting."""
        now = self._clock()
        left = [self._states[n].resting_until - now for n in names]
        return min(left) if left and all(s > 0 for s in left) else None

    def started(self, name: str) -> None:
        self._states[name].in_flight += 1

    def ended(self, name: str) -> None:
        self._states[name].in_flight -= 1

    def succeeded(self, name: str) -> None:
        state = self._states[name]
        if state.failures >= self._routing.eject_after_failures:
            log.info("backend_recovered", backend=name)
            self._metrics.backend_up.labels(name).set(1)
        state.failures = 0

    def failed(self, name: str) -> None:
        state = self._states[name]
        state.failures += 1
        if state.failures >= self._routing.eject_after_failures:
            state.ejected_until = self._clock() + self._routing.eject_for_s
            self._metrics.ejections.labels(name).inc()
            self._metrics.backend_up.labels(name).set(0)
            log.warning("backend_ejected", backend=name, failures=state.failures,
                        for_s=self._routing.eject_for_s)

    def rate_limited(self, names: Iterable[str]) -> bool:
        """Whether every one of these backends rests on a 429 (not on a 503)."""
        return all(self._states[n].rested_by == 429 for n in names)

    def rest(self, name: str, status: int, retry_after: str | None) -> None:
        """Leave the backend alone for as long as it asked (seconds or an HTTP date), at least
        a second and at most `max_retry_after_s`: a backend cannot park itself for a day."""
        seconds = min(max(_seconds(retry_after), 1.0), self._routing.max_retry_after_s)
        state = self._states[name]
        state.resting_until = max(state.resting_until, self._clock() + seconds)
        state.rested_by = status
        log.info("backend_resting", backend=name, for_s=round(seconds, 1))

    def probed(self, name: str, ok: bool) -> None:
        state = self._states[name]
        if state.probe_failed != (not ok):
            (log.info if ok else log.warning)("backend_probe", backend=name, ok=ok)
            self._metrics.backend_up.labels(name).set(1 if ok else 0)
        state.probe_failed = not ok
        if ok:
            state.failures = 0
            state.ejected_until = 0.0


def _seconds(retry_after: str | None) -> float:
    """Retry-After as delay-seconds, or as an HTTP date (RFC 9110 10.2.3); 1 s if unreadable."""
    if not retry_after:
        return 1.0
    text = retry_after.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return 1.0
        return max(0.0, when.timestamp() - time.time())
    return value if math.isfinite(value) else 1.0
