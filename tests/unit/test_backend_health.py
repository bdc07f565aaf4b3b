"""Passive health, rest on Retry-After, the retry budget and the balancer, on a fake clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from gateway.errors import UpstreamBusy, UpstreamRateLimited
from gateway.observability.metrics import Metrics
from gateway.proxy.balance import Balancer
from gateway.proxy.budget import RetryBudget
from gateway.proxy.health import Health
from gateway.settings import BackendSettings, RoutingSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def health(clock: Clock, **routing: object) -> Health:
    return Health(["a", "b"], RoutingSettings.model_validate(routing), Metrics(), clock)


def backends(**weights: int) -> list[BackendSettings]:
    return [BackendSettings(name=n, url=f"http://{n}", weight=w) for n, w in weights.items()]


def test_failures_in_a_row_eject_and_a_success_closes_the_circuit() -> None:
    clock = Clock()
    h = health(clock, eject_after_failures=3, eject_for_s=10)
    h.failed("a")
    h.failed("a")
    h.succeeded("a")  # not in a row any more
    h.failed("a")
    h.failed("a")
    assert h.why_unusable("a") is None
    h.failed("a")
    assert h.why_unusable("a") == "ejected"
    clock.now += 10.1
    assert h.why_unusable("a") is None  # half-open
    h.failed("a")
    assert h.why_unusable("a") == "ejected"  # one more failure is enough
    clock.now += 10.1
    h.succeeded("a")
    h.failed("a")
    assert h.why_unusable("a") is None


@pytest.mark.parametrize(("retry_after", "rests_s"), [
    ("5", 5), ("0", 1), ("-3", 1), ("nonsense", 1), (None, 1), ("1e9", 60), ("inf", 1),
    ("2.5", 2.5)])
def test_retry_after_is_read_floored_and_capped(retry_after: str | None, rests_s: float) -> None:
    clock = Clock()
    h = health(clock)
    h.rest("a", 429, retry_after)
    assert h.rest_left_s(["a"]) == pytest.approx(rests_s)


def test_retry_after_as_an_http_date() -> None:
    h = health(Clock())
    h.rest("a", 503, format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True))
    assert 18 <= (h.rest_left_s(["a"]) or 0) <= 20


def test_rest_left_only_when_every_backend_rests() -> None:
    clock = Clock()
    h = health(clock)
    h.rest("a", 429, "5")
    assert h.rest_left_s(["a", "b"]) is None
    h.rest("b", 429, "3")
    assert h.rest_left_s(["a", "b"]) == pytest.approx(3)


def test_balancer_never_asks_a_resting_backend_and_says_how_long_to_wait() -> None:
    clock = Clock()
    h = health(clock)
    balancer = Balancer(RoutingSettings(), h)
    h.rest("a", 429, "4")
    assert [b.name for b in balancer.plan(backends(a=1, b=1))] == ["b"]
    h.rest("b", 429, "2")
    with pytest.raises(UpstreamRateLimited) as limited:
        balancer.plan(backends(a=1, b=1))
    assert limited.value.headers == {"Retry-After": "2"}
    h.rest("b", 503, "2")
    with pytest.raises(UpstreamBusy):
        balancer.plan(backends(a=1, b=1))


def test_balancer_tries_ejected_backends_only_when_nothing_else_is_left() -> None:
    clock = Clock()
    h = health(clock, eject_after_failures=1)
    balancer = Balancer(RoutingSettings(), h)
    h.failed("a")
    assert [b.name for b in balancer.plan(backends(a=1, b=1))] == ["b"]
    h.failed("b")
    assert [b.name for b in balancer.plan(backends(a=1, b=1))] == ["a", "b"]


def test_weighted_order_follows_the_weights() -> None:
    h = health(Clock())
    balancer = Balancer(RoutingSettings(balance="weighted"), h, random.Random(7))
    firsts = [balancer.plan(backends(a=1, b=4))[0].name for _ in range(5000)]
    assert firsts.count("b") / 5000 == pytest.approx(0.8, abs=0.03)


def test_least_busy_picks_the_fewest_in_flight_per_weight() -> None:
    h = health(Clock())
    balancer = Balancer(RoutingSettings(balance="least_busy"), h, random.Random(1))
    for _ in range(3):
        h.started("a")
    h.started("b")
    assert balancer.plan(backends(a=1, b=1))[0].name == "b"
    assert balancer.plan(backends(a=4, b=1))[0].name == "a"  # 3/4 < 1/1


def test_retry_budget_allows_its_ratio_plus_the_trickle() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.5, min_per_s=0, clock=clock)
    for _ in range(50):  # drain what it starts with (a hundred requests' worth)
        budget.withdraw()
    assert not budget.withdraw()
    budget.deposit()
    assert not budget.withdraw()  # half a retry
    budget.deposit()
    assert budget.withdraw()
    trickle = RetryBudget(ratio=0, min_per_s=2, clock=clock)
    assert sum(trickle.withdraw() for _ in range(100)) == 20  # ten seconds' worth
    clock.now += 1
    assert sum(trickle.withdraw() for _ in range(100)) == 2
