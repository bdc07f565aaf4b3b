"""Key sets: fetched once an hour from the policy's URL; one that cannot be re-fetched is used
until its hour is up and then not at all (a token level is then unmet, not met with old keys)."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
import pytest

from gateway.attestation.jwks import JWKS_TTL_S, JwksCache
from gateway.attestation.transport import Response

URL = "https://keys.test/jwks"
KEYS = {"keys": [{"kty": "EC", "kid": "k1"}]}


class KeyService:
    def __init__(self) -> None:
        self.answer = Response(200, orjson.dumps(KEYS))
        self.asked = 0

    async def certificate(self, host: str, port: int, *, timeout_s: float) -> bytes:
        raise AssertionError("a key set needs no certificate read")

    async def get(self, url: str, *, params: Mapping[str, str] | None = None,
                  pin: bytes | None = None, timeout_s: float, max_bytes: int) -> Response:
        assert (url, pin) == (URL, None)  # CA-checked, not pinned: a public service
        self.asked += 1
        return self.answer


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_fetched_once_an_hour_and_unusable_after_a_failed_refresh() -> None:
    service, clock = KeyService(), Clock()
    cache = JwksCache(service, clock)
    assert cache.keys(URL) is None
    await cache.refresh([URL, URL])
    await cache.refresh([URL])
    assert (cache.keys(URL), service.asked) == (KEYS, 1)
    service.answer = Response(503, b"")
    clock.now += JWKS_TTL_S - 1
    assert cache.keys(URL) == KEYS
    clock.now += 1
    await cache.refresh([URL])
    assert (cache.keys(URL), service.asked) == (None, 2)


@pytest.mark.parametrize("answer", [Response(404, b""), Response(200, b"<html>"),
                                    Response(200, b'["not", "a", "set"]')])
async def test_anything_but_a_json_object_is_no_key_set(answer: Response) -> None:
    service = KeyService()
    service.answer = answer
    cache = JwksCache(service, Clock())
    await cache.refresh([URL])
    assert cache.keys(URL) is None
