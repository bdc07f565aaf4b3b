"""Per-key token buckets, in memory (per worker process).

A bucket holds `burst` tokens and refills at `requests_per_second`; a request takes one token or
is refused with the time until one is available, which becomes the Retry-After header. Either
way the caller learns its quota, which every answer carries as OpenAI's `x-ratelimit-*`
headers (the official SDKs and many clients pace themselves by them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import RateLimited
from gateway.settings import RateLimit


@dataclass(frozen=True)
class Quota:
    """A key's quota of requests (after this one) or of tokens (before this reply is counted):
    the bucket's size, what is left of it, and the seconds until it is whole again; as
    OpenAI's `x-ratelimit-*-{unit}` headers, which the official SDKs read."""

    limit: int
    remaining: int
    reset_s: float
    unit: str = "requests"

    def headers(self) -> dict[str, str]:
        return {f"x-ratelimit-limit-{self.unit}": str(self.limit),
                f"x-ratelimit-remaining-{self.unit}": str(self.remaining),
                f"x-ratelimit-reset-{self.unit}": f"{self.reset_s:.3f}s"}


def quota_of(limit: RateLimit, tokens: float) -> Quota:
    tokens = max(0.0, tokens)
    return Quota(limit.burst, math.floor(tokens),
                 max(0.0, (limit.burst - tokens) / limit.requests_per_second))


def token_quota(per_minute: int, tokens: float) -> Quota:
    left = max(0.0, tokens)
    return Quota(per_minute, math.floor(left), max(0.0, (per_minute - tokens) * 60 / per_minute),
                 "tokens")


def refused(wait_s: float, quota: Quota) -> RateLimited:
    retry_after = max(1, math.ceil(wait_s))
    return RateLimited(f"Rate limit exceeded; retry in {retry_after} s.",
                       headers={"Retry-After": str(retry_after), **quota.headers()})


def tokens_spent(wait_s: float, quota: Quota) -> RateLimited:
    retry_after = max(1, math.ceil(wait_s))
    return RateLimited(f"Token rate limit exceeded; retry in {retry_after} s.",
                       headers={"Retry-After": str(retry_after), **quota.headers()},
                       code="tokens_exceeded")


@dataclass
class TokenBucket:
    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; return 0.0 on success, else seconds until a token is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._token_buckets: dict[str, TokenBucket] = {}

    def tokens_left(self, key: str, per_minute: int) -> Quota:
        """The tokens left; raise `RateLimited` while they are spent (below one)."""
        bucket = self._token_bucket(key, per_minute)
        bucket.tokens = min(bucket.capacity,
                            bucket.tokens + (self._clock() - bucket.updated) * bucket.rate)
        bucket.updated = self._clock()
        quota = token_quota(per_minute, bucket.tokens)
        if bucket.tokens < 1.0:
            raise tokens_spent((1.0 - bucket.tokens) / bucket.rate, quota)
        return quota

    def spend_tokens(self, key: str, per_minute: int, tokens: int) -> None:
        bucket = self._token_bucket(key, per_minute)
        now = self._clock()
        bucket.tokens = min(bucket.capacity,
                            bucket.tokens + (now - bucket.updated) * bucket.rate) - tokens
        bucket.updated = now

    def _token_bucket(self, key: str, per_minute: int) -> TokenBucket:
        bucket = self._token_buckets.get(key)
        if bucket is None or bucket.capacity != per_minute:
            bucket = TokenBucket(per_minute / 60, float(per_minute), float(per_minute),
                                 self._clock())
            self._token_buckets[key] = bucket
        return bucket

    def check(self, key: str, limit: RateLimit) -> Quota:
        """The quota left; raise `RateLimited` with Retry-After (whole seconds, rounded up) when
        over the limit."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != limit.requests_per_second \
                or bucket.capacity != limit.burst:
            bucket = TokenBucket(limit.requests_per_second, float(limit.burst),
                                 float(limit.burst), now)
            self._buckets[key] = bucket
        wait = bucket.take(now)
        quota = quota_of(limit, bucket.tokens)
        if wait > 0:
            raise refused(wait, quota)
        return quota
