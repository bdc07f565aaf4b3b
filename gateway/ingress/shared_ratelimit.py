"""Rate limits shared by every worker and replica, atomic in Redis: one token bucket per API
key, kept by a Lua script on the server's clock, so that N replicas admit a key's `burst` and
`requests_per_second` exactly once between them, not N times.

If Redis cannot be reached within `state.timeout_s`, `state.rate_limits_on_failure` decides:
`local` (the default) falls back to this worker's own buckets, so every process still bounds
each key (a Redis outage must not take the gateway down over a fairness control, nor lift the
limits altogether); `closed` refuses with 503 `rate_limiter_unavailable`.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import RateLimiterUnavailable
from gateway.ingress.ratelimit import (
    Quota,
    RateLimiter,
    quota_of,
    refused,
    token_quota,
    tokens_spent,
)
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.settings import RateLimit, StateSettings

log = get_logger("veil.ratelimit")

# KEYS[1]: the bucket; ARGV: rate (tokens per second), capacity. Returns the seconds to wait
# (0: admitted) and the tokens left, as strings: Lua numbers would come back as integers.
TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(bucket[1]), tonumber(bucket[2])
if tokens == nil then tokens, at = capacity, now end
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {tostring(wait), tostring(tokens)}
"""
PREFIX = "veil:ratelimit:"
# Tokens per minute: ARGV rate, capacity, cost. Refill; cost 0 asks whether any are left
# (returns the seconds until one is, and the tokens left); a cost takes it, down below zero if
# the reply used more.
TOKENS = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, capacity, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(bucket[1]), tonumber(bucket[2])
if tokens == nil then tokens, at = capacity, now end
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate) - cost
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
return {tostring(wait), tostring(tokens)}
"""


class SharedRateLimiter:
    def __init__(self, redis: Redis, state: StateSettings, metrics: Metrics,
                 local: RateLimiter | None = None) -> None:
        self._take = redis.register_script(TAKE)
        self._tokens = redis.register_script(TOKENS)
        self._state = state
        self._metrics = metrics
        self._local = local or RateLimiter()

    async def tokens_left(self, key: str, per_minute: int) -> Quota:
        """The tokens left; raise `RateLimited` while they are spent."""
        answer = await self._tokens_call(key, per_minute, 0)
        if answer is None:
            return self._local.tokens_left(key, per_minute)
        wait, tokens = answer
        quota = token_quota(per_minute, tokens)
        if wait > 0:
            raise tokens_spent(wait, quota)
        return quota

    async def spend_tokens(self, key: str, per_minute: int, tokens: int) -> None:
        """Take what a reply used. Never raises: the reply has been answered already."""
        if await self._tokens_call(key, per_minute, tokens, refuse=False) is None:
            self._local.spend_tokens(key, per_minute, tokens)

    async def _tokens_call(self, key: str, per_minute: int, cost: int, *,
                           refuse: bool = True) -> tuple[float, float] | None:
        """The script's answer (seconds to wait, tokens left); None when Redis failed and the
        local bucket is to be used (or, failing closed and `refuse`, RateLimiterUnavailable)."""
        try:
            async with asyncio.timeout(self._state.timeout_s):
                wait, tokens = await self._tokens(keys=[PREFIX + "tokens:" + key],
                                                  args=[per_minute / 60, per_minute, cost])
                return float(wait), float(tokens)
        except (RedisError, OSError, TimeoutError) as exc:
            self._unavailable(exc, refuse=refuse)
            return None

    def _unavailable(self, exc: BaseException, *, refuse: bool = True) -> None:
        self._metrics.state_failures.labels("rate_limits").inc()
        log.warning("rate_limit_store_unavailable", error=type(exc).__name__,
                    fallback=self._state.rate_limits_on_failure)
        if refuse and self._state.rate_limits_on_failure == "closed":
            raise RateLimiterUnavailable from None

    async def check(self, key: str, limit: RateLimit) -> Quota:
        """The quota left; raise `RateLimited` (with Retry-After) when over the limit. `key`:
        the API key's digest, never the key."""
        try:
            async with asyncio.timeout(self._state.timeout_s):
                wait, tokens = await self._take(keys=[PREFIX + key],
                                                args=[limit.requests_per_second, limit.burst])
        except (RedisError, OSError, TimeoutError) as exc:
            self._unavailable(exc)
            return self._local.check(key, limit)
        quota = quota_of(limit, float(tokens))
        if float(wait) > 0:
            raise refused(float(wait), quota)
        return quota
