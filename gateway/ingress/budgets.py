"""Token budgets per API key and per tenant, per calendar day and month (UTC): a request is
admitted while its budgets have tokens left, and what its reply used (the upstream's `usage`)
is taken afterwards, like tokens per minute. So a budget can be overrun by the replies in
flight when it runs out, never by a request admitted after.

Spend is counted per period in a counter named by the period (`...:d2025-01-31`,
`...:m2025-01`), so a new period starts from zero without anything resetting it. With
`state.redis_url` the counters live in Redis (INCRBY, expiring an hour after their period),
shared by every worker and replica; they are named by the key's digest or the tenant's, as the
rate limiter's buckets are, never by a name. The period is the gateway's clock's (keep
replicas' clocks in sync, as TLS needs anyway).

If Redis cannot be reached within `state.timeout_s`, `state.rate_limits_on_failure` decides,
as for rate limits: `local` counts in this process's own counters until Redis is back (each
process then bounds what it spends, from zero: a fleet can overspend by its size for as long as
the outage lasts); `closed` refuses with 503 `rate_limiter_unavailable`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import RateLimited, RateLimiterUnavailable
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.settings import Budget, StateSettings

log = get_logger("veil.budgets")

Scope = Literal["key", "tenant"]
Period = Literal["day", "month"]
PREFIX = "veil:budget:"
KEPT_AFTER_PERIOD_S = 3600  # a counter outlives its period a little: replicas' clocks differ
WORDS = {"key": "this API key's", "tenant": "this key's tenant's",
         "day": "daily", "month": "monthly"}


@dataclass(frozen=True)
class Allowance:
    """One budget of one bucket (a key's digest, or a tenant's) for one kind of period."""

    scope: Scope
    bucket: str
    period: Period
    tokens: int


def allowances(scope: Scope, bucket: str, *budgets: Budget | None) -> tuple[Allowance, ...]:
    """The bucket's allowances; where several budgets set a period, the smallest holds."""
    periods: tuple[tuple[Period, list[int | None]], ...] = (
        ("day", [b.tokens_per_day for b in budgets if b]),
        ("month", [b.tokens_per_month for b in budgets if b]))
    found: list[Allowance] = []
    for period, limits in periods:
        given = [limit for limit in limits if limit is not None]
        if given:
            found.append(Allowance(scope, bucket, period, min(given)))
    return tuple(found)


def period_of(now: float, period: Period) -> tuple[str, datetime]:
    """The period `now` falls in: its name, and when it ends."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return f"d{start:%Y-%m-%d}", start + timedelta(days=1)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return f"m{start:%Y-%m}", following


def counter_name(allowance: Allowance, now: float) -> str:
    return f"{allowance.bucket}:{period_of(now, allowance.period)[0]}"


def budget_spent(allowance: Allowance, now: float) -> RateLimited:
    ends = period_of(now, allowance.period)[1]
    wait = max(1, math.ceil(ends.timestamp() - now))
    return RateLimited(
        f"Token budget exceeded: {WORDS[allowance.scope]} {WORDS[allowance.period]} budget of "
        f"{allowance.tokens} tokens is spent; it renews at {ends:%Y-%m-%dT%H:%M:%SZ} "
        f"(in {wait} s).", headers={"Retry-After": str(wait)}, code="budget_exceeded")


class LocalCounters:
    """This process's counters: per bucket and kind of period, the period counted and its
    spend (a new period replaces the old one, so there are at most two per bucket)."""

    def __init__(self) -> None:
        self._spent: dict[tuple[str, Period], tuple[str, int]] = {}

    def spent(self, allowances: Sequence[Allowance], now: float) -> list[int]:
        return [self._current(a, now) for a in allowances]

    def add(self, allowances: Sequence[Allowance], tokens: int, now: float) -> None:
        for allowance in allowances:
            self._spent[(allowance.bucket, allowance.period)] = (
                period_of(now, allowance.period)[0], self._current(allowance, now) + tokens)

    def _current(self, allowance: Allowance, now: float) -> int:
        period, spent = self._spent.get((allowance.bucket, allowance.period), ("", 0))
        return spent if period == period_of(now, allowance.period)[0] else 0


class Budgets:
    """Checks allowances at admission and spends replies' tokens from them; in Redis when
    given one, else (and as the fallback) in this process's counters."""

    def __init__(self, metrics: Metrics, redis: Redis | None = None,
                 state: StateSettings | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self._redis = redis
        self._state = state or StateSettings()
        self._clock = clock
        self._local = LocalCounters()

    async def check(self, allowances: Sequence[Allowance]) -> None:
        """Raise `RateLimited` (429 `budget_exceeded`, Retry-After until it renews) when an
        allowance is spent: the one that renews last, as nothing is admitted before."""
        if not allowances:
            return
        now = self._clock()
        spent = await self._spent(allowances, now)
        exhausted = [a for a, used in zip(allowances, spent, strict=True) if used >= a.tokens]
        if exhausted:
            raise budget_spent(max(exhausted, key=lambda a: period_of(now, a.period)[1]), now)

    async def spend(self, allowances: Sequence[Allowance], tokens: int) -> None:
        """Take what a reply used. Never raises: the reply has been answered already."""
        if not allowances or tokens <= 0:
            return
        now = self._clock()
        if self._redis is None or not await self._spend_shared(self._redis, allowances,
                                                               tokens, now):
            self._local.add(allowances, tokens, now)

    async def _spend_shared(self, redis: Redis, allowances: Sequence[Allowance], tokens: int,
                            now: float) -> bool:
        """Add to the shared counters, all or none; False when Redis failed."""
        try:
            async with asyncio.timeout(self._state.timeout_s):
                async with redis.pipeline(transaction=True) as pipe:
                    for allowance in allowances:
                        name = PREFIX + counter_name(allowance, now)
                        ends = period_of(now, allowance.period)[1].timestamp()
                        pipe.incrby(name, tokens)
                        # relative, so Redis's clock does not need to agree with this one's
                        pipe.expire(name, math.ceil(ends - now) + KEPT_AFTER_PERIOD_S)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._unavailable(exc, refuse=False)
            return False
        return True

    async def _spent(self, allowances: Sequence[Allowance], now: float) -> list[int]:
        if self._redis is not None:
            try:
                async with asyncio.timeout(self._state.timeout_s):
                    values = await self._redis.mget(
                        [PREFIX + counter_name(a, now) for a in allowances])
                return [int(v) if v is not None else 0 for v in values]
            except (RedisError, OSError, TimeoutError) as exc:
                self._unavailable(exc)
        return self._local.spent(allowances, now)

    def _unavailable(self, exc: BaseException, *, refuse: bool = True) -> None:
        self._metrics.state_failures.labels("budgets").inc()
        log.warning("budget_store_unavailable", error=type(exc).__name__,
                    fallback=self._state.rate_limits_on_failure)
        if refuse and self._state.rate_limits_on_failure == "closed":
            raise RateLimiterUnavailable from None
