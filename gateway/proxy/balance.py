"""The order in which a request tries a model's backends: the usable ones by the configured
balance, then (only if none is usable) the ejected ones, in case one has recovered: refusing
every request of a model for a whole cool-off is worse than one more try. A backend resting on
its own `Retry-After` is never tried before its time."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.errors import UpstreamBusy, UpstreamRateLimited
from gateway.observability.logging import get_logger
from gateway.proxy.health import Health
from gateway.settings import BackendSettings, RoutingSettings

log = get_logger("veil.route")


class Balancer:
    def __init__(self, routing: RoutingSettings, health: Health,
                 rng: random.Random | None = None) -> None:
        self._balance = routing.balance
        self._health = health
        self._rng = rng or random.Random()  # noqa: S311 (spreading load, not a secret)

    def plan(self, backends: Sequence[BackendSettings]) -> list[BackendSettings]:
        usable = [b for b in backends if self._health.why_unusable(b.name) is None]
        if usable:
            return self._ordered(usable)
        last_resort = [b for b in backends if self._health.why_unusable(b.name) != "resting"]
        if last_resort:
            log.warning("no_healthy_backend", backends=[b.name for b in backends])
            return last_resort
        names = [b.name for b in backends]
        wait = self._health.rest_left_s(names) or 1.0
        if self._health.rate_limited(names):
            raise UpstreamRateLimited(wait)
        raise UpstreamBusy("Every backend for this model asked for time to recover "
                           "(Retry-After); retry later.", wait)

    def _ordered(self, backends: list[BackendSettings]) -> list[BackendSettings]:
        if self._balance == "ordered" or len(backends) == 1:
            return backends
        if self._balance == "least_busy":
            # Fewest in flight per unit of weight; ties broken at random so that idle backends
            # share the traffic instead of the first one taking all of it.
            keyed = [(self._health.state(b.name).in_flight / b.weight, self._rng.random(), b)
                     for b in backends]
            return [b for _, _, b in sorted(keyed, key=lambda k: (k[0], k[1]))]
        return _weighted_order(backends, self._rng)


def _weighted_order(backends: list[BackendSettings], rng: random.Random) -> list[BackendSettings]:
    """A weighted random order without replacement (Efraimidis-Spirakis): the first is chosen
    in proportion to weight, and so is each fallback among those left."""
    keyed = [(rng.random() ** (1.0 / b.weight), b) for b in backends]
    return [b for _, b in sorted(keyed, key=lambda k: k[0], reverse=True)]
