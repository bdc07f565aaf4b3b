"""Token budgets: calendar UTC periods, the budget that refuses and until when, renewal with
the period (an injected clock, never a wait), in this process and in a real Redis shared by
two gateways' counters, and what a Redis outage does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.errors import RateLimited, RateLimiterUnavailable
from gateway.ingress.budgets import PREFIX, Allowance, Budgets, allowances, period_of
from gateway.observability.metrics import Metrics
from gateway.settings import Budget, StateSettings
from tests.redis_server import RedisServer

KEY = "sha256:" + "a" * 64


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, when: str) -> None:
        self.now = at(when)

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("when", "period", "name", "ends"), [
    ("2025-01-31T23:59:59", "day", "d2025-01-31", "2025-02-01T00:00:00"),
    ("2025-02-01T00:00:00", "day", "d2025-02-01", "2025-02-02T00:00:00"),
    ("2025-01-31T23:59:59", "month", "m2025-01", "2025-02-01T00:00:00"),
    ("2025-12-15T08:00:00", "month", "m2025-12", "2026-01-01T00:00:00"),
    ("2024-02-29T12:00:00", "month", "m2024-02", "2024-03-01T00:00:00"),
])
def test_periods_are_calendar_days_and_months_in_utc(when: str, period: str, name: str,
                                                      ends: str) -> None:
    got_name, got_end = period_of(at(when), period)  # type: ignore[arg-type]
    assert (got_name, got_end.timestamp()) == (name, at(ends))


def test_a_keys_own_budget_narrows_its_tenants_never_widens() -> None:
    tenant = Budget(tokens_per_day=100, tokens_per_month=1000)
    assert allowances("key", KEY, tenant, Budget(tokens_per_day=500)) == (
        Allowance("key", KEY, "day", 100), Allowance("key", KEY, "month", 1000))
    assert allowances("key", KEY, tenant, Budget(tokens_per_day=10)) == (
        Allowance("key", KEY, "day", 10), Allowance("key", KEY, "month", 1000))
    assert allowances("key", KEY, None, None) == ()


def test_a_budget_names_a_period() -> None:
    with pytest.raises(ValueError, match="tokens_per_day or tokens_per_month"):
        Budget()


DAY = (Allowance("key", KEY, "day", 10),)
BOTH = (Allowance("key", KEY, "day", 10), Allowance("tenant", "tenant:x", "month", 15))


async def spent_then_renewed(first: Budgets, second: Budgets, clock: Clock) -> None:
    """Spend through `first`, be refused through `second` (the same counters), renew."""
    await second.check(DAY)
    await first.spend(DAY, 7)
    await second.check(DAY)  # 3 left: admitted, and the reply may use more
    await first.spend(DAY, 7)
    with pytest.raises(RateLimited) as refused:
        await second.check(DAY)
    error = refused.value
    assert (error.status, error.code) == (429, "budget_exceeded")
    assert "this API key's daily budget of 10 tokens is spent" in error.message
    assert "2025-03-11T00:00:00Z" in error.message
    assert KEY not in error.message
    assert error.headers["Retry-After"] == str(6 * 3600)
    clock.now = at("2025-03-11T00:00:00")  # the next day
    await second.check(DAY)


async def test_a_budget_refuses_once_spent_and_renews_with_the_day() -> None:
    clock = Clock("2025-03-10T18:00:00")
    budgets = Budgets(Metrics(), clock=clock)
    await spent_then_renewed(budgets, budgets, clock)


async def test_the_budget_renewing_last_is_the_one_named() -> None:
    clock = Clock("2025-03-10T18:00:00")
    budgets = Budgets(Metrics(), clock=clock)
    await budgets.spend(BOTH, 20)
    with pytest.raises(RateLimited) as refused:
        await budgets.check(BOTH)
    assert "this key's tenant's monthly budget of 15 tokens" in refused.value.message
    assert refused.value.headers["Retry-After"] == str(int(at("2025-04-01T00:00:00")
                                                           - clock.now))
    clock.now = at("2025-03-11T00:00:01")  # a new day does not renew a month
    with pytest.raises(RateLimited):
        await budgets.check(BOTH)
    clock.now = at("2025-04-01T00:00:00")
    await budgets.check(BOTH)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_shared_counters_refuse_on_every_gateway_and_expire_after_their_period(
        redis: Redis) -> None:
    clock = Clock("2025-03-10T18:00:00")
    first, second = (Budgets(Metrics(), redis, StateSettings(redis_url="redis://x"),
                             clock=clock) for _ in range(2))
    await spent_then_renewed(first, second, clock)
    names = sorted(k.decode() for k in await redis.keys(PREFIX + "*"))
    assert names == [PREFIX + KEY + ":d2025-03-10"]  # by digest and period, no name
    assert 6 * 3600 < await redis.ttl(names[0]) <= 7 * 3600  # its period's 6 h, and 1 more


async def unreachable(on_failure: str) -> tuple[Budgets, Metrics]:
    metrics = Metrics()
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    state = StateSettings(redis_url="redis://127.0.0.1:1/0",
                          rate_limits_on_failure=on_failure)  # type: ignore[arg-type]
    return Budgets(metrics, dead, state, clock=Clock("2025-03-10T18:00:00")), metrics


async def test_without_redis_budgets_fall_back_to_this_process() -> None:
    budgets, metrics = await unreachable("local")
    await budgets.check(DAY)
    await budgets.spend(DAY, 10)  # never raises: the reply was answered
    with pytest.raises(RateLimited):
        await budgets.check(DAY)
    assert metrics.state_failures.labels("budgets")._value.get() == 3


async def test_without_redis_budgets_fail_closed_when_told() -> None:
    budgets, _ = await unreachable("closed")
    with pytest.raises(RateLimiterUnavailable) as refused:
        await budgets.check(DAY)
    assert refused.value.status == 503
    await budgets.spend(DAY, 10)  # still never raises
