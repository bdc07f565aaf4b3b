"""Token budgets through the real gateway: a key's and a tenant's refuse once the replies'
usage spent them, in one gateway and across two on one real Redis. (Periods and renewal, with
an injected clock: tests/unit/ingress/test_budgets.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
import redis

from gateway.demo.upstream import build_demo_app
from gateway.ingress.auth import hash_api_key
from gateway.ingress.budgets import PREFIX
from tests.redis_server import RedisServer
from tests.servers import TEST_KEY, ServerThread, backend, gateway_for, settings_for

SECOND_KEY = "veil-test-key-second-of-tenant-test"
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
# A demo reply to CHAT uses 10 tokens (1 in, 9 out): a budget of 5 is spent by one.


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


@contextmanager
def gateways(tenant: dict[str, Any], count: int = 1, redis_url: str | None = None
             ) -> Iterator[list[ServerThread]]:
    with ExitStack() as stack:
        up = stack.enter_context(ServerThread(build_demo_app()))
        settings = settings_for(
            [backend("up", up.url)], {"test-model": ["up"]},
            tenants={"test": {"models": ["*"], **tenant}},
            api_keys=[{"name": "test-key", "tenant": "test", "hash": hash_api_key(TEST_KEY)},
                      {"name": "second", "tenant": "test", "hash": hash_api_key(SECOND_KEY)}],
            state={"redis_url": redis_url} if redis_url else {})
        yield [stack.enter_context(gateway_for(settings)) for _ in range(count)]


def chat(gw: ServerThread, key: str = TEST_KEY, **extra: Any) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, **extra},
                      headers={"Authorization": f"Bearer {key}"}, timeout=10)


def assert_refused(reply: httpx.Response, budget: str, longest_s: int) -> None:
    assert reply.status_code == 429, reply.text
    error = reply.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert budget in error["message"]
    assert TEST_KEY not in reply.text
    assert "sha256" not in reply.text
    assert 1 <= int(reply.headers["Retry-After"]) <= longest_s


@pytest.mark.parametrize("stream", [False, True])
def test_a_keys_daily_budget_refuses_once_its_replies_spent_it(stream: bool) -> None:
    with gateways({"budget": {"tokens_per_day": 5}}) as (gw,):
        extra = {"stream": True} if stream else {}
        assert chat(gw, **extra).status_code == 200
        assert_refused(chat(gw, **extra), "this API key's daily budget of 5 tokens", 86400)
        assert chat(gw, SECOND_KEY).status_code == 200  # each key has its own


def test_a_tenants_monthly_budget_is_shared_by_its_keys() -> None:
    with gateways({"total_budget": {"tokens_per_month": 15}}) as (gw,):
        assert chat(gw).status_code == 200  # 10 of 15
        assert chat(gw, SECOND_KEY).status_code == 200  # 20: spent
        for key in (TEST_KEY, SECOND_KEY):
            assert_refused(chat(gw, key), "this key's tenant's monthly budget of 15 tokens",
                           31 * 86400)


def test_the_openai_sdk_sees_a_rate_limit_error_naming_the_budget() -> None:
    with gateways({"budget": {"tokens_per_month": 5}}) as (gw,):
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert refused.value.code == "budget_exceeded"
    assert "monthly budget" in refused.value.message


def test_budgets_hold_across_gateways_on_one_redis(redis_server: RedisServer) -> None:
    tenant = {"budget": {"tokens_per_day": 5}, "total_budget": {"tokens_per_day": 15}}
    with gateways(tenant, 2, redis_server.url) as (first, second):
        assert chat(first).status_code == 200
        assert_refused(chat(second), "this API key's daily budget", 86400)
        assert chat(second, SECOND_KEY).status_code == 200  # the tenant's 20 of 15
        assert_refused(chat(first, SECOND_KEY), "daily budget", 86400)
        names = redis.Redis.from_url(redis_server.url).keys(PREFIX + "*")
    assert len(names) == 3  # each key's, and the tenant's
    assert all(b"test" not in n.removeprefix(PREFIX.encode()) for n in names)  # no names


def test_without_redis_each_gateway_counts_its_own() -> None:
    with gateways({"budget": {"tokens_per_day": 5}}, 2) as (first, second):
        assert chat(first).status_code == 200
        assert chat(first).status_code == 429
        assert chat(second).status_code == 200
