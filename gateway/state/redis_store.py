"""The connection to the shared store: one client per worker, every call bounded by
`state.timeout_s`, so a slow or dead Redis costs a request a known, small delay and then the
behaviour its concern's config chose, never a hang."""

from __future__ import annotations

from redis.asyncio import Redis

from gateway.settings import StateSettings


def connect(state: StateSettings) -> Redis:
    assert state.redis_url is not None  # noqa: S101 (callers check; settings validated it)
    return Redis.from_url(state.redis_url, socket_timeout=state.timeout_s,
                          socket_connect_timeout=state.timeout_s, health_check_interval=0,
                          retry_on_timeout=False, decode_responses=True)
