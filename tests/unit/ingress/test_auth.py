"""Client keys -> tenants: which header counts, what is refused, what is cached, rate limits."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.errors import AuthenticationFailed, RateLimited
from gateway.ingress.auth import Authenticator, hash_api_key, new_api_key
from gateway.ingress.ratelimit import RateLimiter
from gateway.observability.metrics import Metrics
from gateway.settings import Settings

GOOD, OTHER = "veil-good-key-0123456789", "veil-other-key-0123456789"


def authenticator(burst: int = 100) -> Authenticator:
    settings = Settings.model_validate({
        "policies": {"files": ["p.yaml"]}, "backends": [], "models": {},
        "tenants": {"a": {}, "b": {"rate_limit": {"requests_per_second": 0.001,
                                                  "burst": burst}}},
        "api_keys": [{"name": "good", "tenant": "a", "hash": hash_api_key(GOOD)},
                     {"name": "other", "tenant": "b", "hash": hash_api_key(OTHER)}]})
    return Authenticator(settings, RateLimiter(), Metrics())


def request(**headers: str) -> web.Request:
    return make_mocked_request("POST", "/v1/chat/completions", headers=headers)


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {GOOD}"},
    {"Authorization": f"bearer   {GOOD}  "},
    {"x-api-key": GOOD},
    {"Authorization": "Bearer ", "x-api-key": GOOD},  # an empty bearer is no key at all
])
def test_either_sdk_header_is_accepted(headers: dict[str, str]) -> None:
    caller = authenticator().authenticate(request(**headers))
    assert (caller.key_name, caller.tenant) == ("good", "a")


@pytest.mark.parametrize(("headers", "message"), [
    ({}, "Missing API key"),
    ({"Authorization": f"Basic {GOOD}"}, "Missing API key"),
    ({"Authorization": "Bearer veil-wrong"}, "Invalid API key"),
    # a wrong bearer is not rescued by a right x-api-key: one credential per request
    ({"Authorization": "Bearer veil-wrong", "x-api-key": GOOD}, "Invalid API key"),
])
def test_missing_and_wrong_keys_are_refused(headers: dict[str, str], message: str) -> None:
    with pytest.raises(AuthenticationFailed, match=message) as caught:
        authenticator().authenticate(request(**headers))
    assert caught.value.status == 401
    assert "veil-wrong" not in caught.value.message


def test_only_valid_keys_are_remembered() -> None:
    """A flood of made-up keys cannot grow the cache of verified keys."""
    auth = authenticator()
    for _ in range(50):
        with pytest.raises(AuthenticationFailed):
            auth.authenticate(request(Authorization=f"Bearer {new_api_key()}"))
    auth.authenticate(request(Authorization=f"Bearer {GOOD}"))
    assert list(auth._verified) == [GOOD]


async def test_each_tenant_has_its_own_rate_limit() -> None:
    auth = authenticator(burst=2)
    other = request(Authorization=f"Bearer {OTHER}")
    await auth.admit(other)
    await auth.admit(other)
    with pytest.raises(RateLimited) as caught:
        await auth.admit(other)
    assert "Retry-After" in caught.value.headers
    await auth.admit(request(Authorization=f"Bearer {GOOD}"))  # untouched
