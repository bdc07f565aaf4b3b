from __future__ import annotations

import pytest

from gateway.errors import RateLimited
from gateway.ingress.ratelimit import RateLimiter
from gateway.settings import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    limit = RateLimit(requests_per_second=2, burst=3)
    for _ in range(3):
        limiter.check("k", limit)
    with pytest.raises(RateLimited) as info:
        limiter.check("k", limit)
    assert info.value.headers == {"Retry-After": "1", "x-ratelimit-limit-requests": "3",
                                  "x-ratelimit-remaining-requests": "0",
                                  "x-ratelimit-reset-requests": "1.500s"}
    clock.now += 0.5  # one token back at 2/s
    limiter.check("k", limit)
    with pytest.raises(RateLimited):
        limiter.check("k", limit)


def test_keys_are_independent_and_retry_after_rounds_up() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    slow = RateLimit(requests_per_second=0.25, burst=1)
    limiter.check("a", slow)
    limiter.check("b", slow)
    with pytest.raises(RateLimited) as info:
        limiter.check("a", slow)
    assert info.value.headers["Retry-After"] == "4"


def test_a_token_quota_as_openais_headers() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    assert limiter.tokens_left("k", 600).headers() == {
        "x-ratelimit-limit-tokens": "600", "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "0.000s"}
    limiter.spend_tokens("k", 600, 900)  # a reply that used more than was left
    with pytest.raises(RateLimited) as info:
        limiter.tokens_left("k", 600)
    assert info.value.headers == {"Retry-After": "31", "x-ratelimit-limit-tokens": "600",
                                  "x-ratelimit-remaining-tokens": "0",
                                  "x-ratelimit-reset-tokens": "90.000s"}
    clock.now += 31
    assert limiter.tokens_left("k", 600).remaining == 10
