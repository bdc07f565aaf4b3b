"""Rate limits shared through a real Redis: exact across gateways and across `veil serve`
workers; Redis killed and restarted mid-run: the configured behaviour, then recovery."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
from tests.conftest import Demo
from tests.integration.faults import FaultyUpstream
from tests.integration.test_cli_serve import ROOT, free_port, write_config
from tests.redis_server import RedisServer
from tests.servers import (
    OTHER_KEY,
    TEST_KEY,
    UPSTREAM_SECRET,
    ServerThread,
    backend,
    demo_backend,
    gateway_for,
    settings_for,
)

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
TIGHT = {"requests_per_second": 0.001, "burst": 5}  # five requests, then none for a long while


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


@contextmanager
def gateways(redis_url: str | None, count: int, **state: Any) -> Iterator[list[ServerThread]]:
    with ExitStack() as stack:
        up = stack.enter_context(ServerThread(build_demo_app()))  # streams as a model does
        settings = settings_for([backend("up", up.url)], {"test-model": ["up"]},
                                tenants={"test": {"models": ["*"], "rate_limit": TIGHT}},
                                api_keys=[{"name": "test-key", "tenant": "test",
                                           "hash": hash_api_key(TEST_KEY)}],
                                state={"redis_url": redis_url, "timeout_s": 0.5, **state}
                                if redis_url else {})
        yield [stack.enter_context(gateway_for(settings)) for _ in range(count)]


def statuses(urls: list[str], n: int) -> list[int]:
    """`n` requests spread over `urls` in turn, each on a fresh connection."""
    return [httpx.post(urls[i % len(urls)] + "/v1/chat/completions", json=CHAT, headers=AUTH,
                       timeout=10).status_code for i in range(n)]


def test_a_keys_limit_holds_exactly_across_gateways(redis_server: RedisServer) -> None:
    with gateways(redis_server.url, 3) as gws:
        got = statuses([g.url for g in gws], 12)
    assert got.count(200) == 5, got
    assert got.count(429) == 7, got


def test_a_keys_limit_holds_exactly_across_workers(redis_server: RedisServer,
                                                   tmp_path: Path) -> None:
    upstream = FaultyUpstream("ok")
    with ServerThread(upstream.app()) as up:
        port = free_port()
        config = write_config(tmp_path / "config.yaml", up.url, port)
        config.write_text(config.read_text().replace(
            "tenants: {t: {}}", "tenants: {t: {rate_limit: {requests_per_second: 0.001, "
            "burst: 4}}}") + f"state: {{redis_url: \"{redis_server.url}\"}}\n")
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config",
                                    str(config), "--workers", "2"], cwd=ROOT, env=env,
                                   stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, process)
            body = {**CHAT, "model": "m"}
            got = [httpx.post(url + "/v1/chat/completions", json=body, headers=AUTH,
                              timeout=10).status_code for _ in range(12)]
        finally:
            process.terminate()
            process.wait(30)
    assert got.count(200) == 4, got  # in memory, each worker admitted its own burst
    assert set(got) == {200, 429}, got


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "veil serve exited"
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("veil serve never became ready")


def test_redis_down_falls_back_to_local_limits_then_recovers(
        redis_server: RedisServer) -> None:
    with gateways(redis_server.url, 2) as gws:
        urls = [g.url for g in gws]
        assert statuses(urls, 2) == [200, 200]  # two of the shared five
        redis_server.stop()
        down = statuses(urls, 14)  # each gateway on its own buckets: five each
        assert down.count(200) == 10, down
        page = httpx.get(urls[0] + "/metrics").text
        assert 'veil_state_failures_total{concern="rate_limits"}' in page
        redis_server.start()  # same port, empty: the shared bucket starts full again
        back = statuses(urls, 8)
        assert back.count(200) == 5, back


def test_redis_down_fails_closed_when_configured(redis_server: RedisServer) -> None:
    with gateways(redis_server.url, 1, rate_limits_on_failure="closed") as (gw,):
        assert statuses([gw.url], 1) == [200]
        redis_server.stop()
        started = time.monotonic()
        r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=10)
        assert time.monotonic() - started < 3  # bounded by state.timeout_s, never a hang
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "rate_limiter_unavailable"
        assert r.headers["Retry-After"] == "1"
        redis_server.start()
        assert statuses([gw.url], 1) == [200]


@pytest.mark.parametrize("shared", [True, False])
def test_every_answer_carries_the_quota(shared: bool, redis_server: RedisServer) -> None:
    with gateways(redis_server.url if shared else None, 1) as (gw,), \
            httpx.Client(base_url=gw.url, headers=AUTH, timeout=10) as client:
        with client.stream("POST", "/v1/chat/completions",
                           json={**CHAT, "stream": True}) as streamed:
            assert streamed.status_code == 200
            streamed_headers = streamed.headers
            assert streamed.headers["content-type"].startswith("text/event-stream")
            assert "[DONE]" in streamed.read().decode()
        answers = [client.post("/v1/chat/completions", json=CHAT) for _ in range(5)]
    assert streamed_headers["x-ratelimit-remaining-requests"] == "4"  # a stream's headers too
    remaining = [a.headers["x-ratelimit-remaining-requests"] for a in answers]
    assert remaining == ["3", "2", "1", "0", "0"]
    assert {a.headers["x-ratelimit-limit-requests"] for a in answers} == {"5"}
    assert [a.status_code for a in answers] == [200] * 4 + [429]
    assert int(answers[4].headers["Retry-After"]) > 0
    assert float(answers[0].headers["x-ratelimit-reset-requests"].removesuffix("s")) > 0


VAULT_SECRET = "vault-secret-shared-by-every-replica-0123"
EMAIL = "ada.lovelace@example.org"
OTHER_EMAIL = "grace.hopper@example.net"


@contextmanager
def replicas(redis_url: str, demo_url: str, count: int) -> Iterator[list[ServerThread]]:
    """`count` gateways sharing Redis and the vault's key, in front of one demo upstream."""
    settings = settings_for([demo_backend("demo-openai", demo_url)],
                            state={"redis_url": redis_url, "timeout_s": 0.5,
                                   "vault_key_env": "VEIL_VAULT_KEY"})
    environ = {"DEMO_KEY": UPSTREAM_SECRET, "VEIL_VAULT_KEY": VAULT_SECRET}
    with ExitStack() as stack:
        yield [stack.enter_context(gateway_for(settings, environ=environ)) for _ in range(count)]


def oai(gateway: ServerThread, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def test_a_conversation_whose_turns_hit_different_replicas_restores_right(
        redis_server: RedisServer, demo: Demo) -> None:
    with replicas(redis_server.url, demo.url, 3) as (a, b, c):
        first = oai(a).responses.create(model="test-model", input=f"Remember {EMAIL}")
        assert EMAIL not in demo.state.received[-1].decode()
        assert EMAIL in oai(b).responses.retrieve(first.id).output_text  # read on another
        second = oai(c).responses.create(model="test-model", previous_response_id=first.id,
                                         input=f"Now also {OTHER_EMAIL}")
        # turn 1 was <EMAIL_1> upstream, so turn 2's new address must be <EMAIL_2>
        assert demo.state.last_body["input"] == "Now also <EMAIL_2>"
        assert second.output_text.endswith(f"(continuing from: Remember {EMAIL})")
        with pytest.raises(openai.NotFoundError):  # another tenant, on any replica
            oai(b, OTHER_KEY).responses.retrieve(first.id)
        oai(a).responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            oai(c).responses.retrieve(first.id)
    keys = _redis_keys(redis_server)
    assert keys  # the second response's record
    assert all(k.startswith("veil:response:") for k in keys)
    assert first.id not in " ".join(keys)  # ids are not readable from Redis


def _redis_keys(server: RedisServer) -> list[str]:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        found = [str(k) for k in client.scan_iter("veil:response:*")]
        values = [str(client.get(k)) for k in found]
    finally:
        client.close()
    assert values
    assert not any(EMAIL in v or OTHER_EMAIL in v or "lovelace" in v for v in values)
    return found


def test_a_vault_that_cannot_be_reached_never_restores_wrongly(
        redis_server: RedisServer, demo: Demo) -> None:
    with replicas(redis_server.url, demo.url, 2) as (a, b):
        first = oai(a).responses.create(model="test-model", input=f"Remember {EMAIL}")
        redis_server.stop()
        sent = len(demo.state.received)
        with pytest.raises(openai.InternalServerError) as refused:
            oai(b).responses.create(model="test-model", previous_response_id=first.id,
                                    input=f"Now also {OTHER_EMAIL}")
        assert refused.value.status_code == 503
        assert refused.value.code == "vault_unavailable"
        assert len(demo.state.received) == sent  # nothing forwarded
        with pytest.raises(openai.InternalServerError):
            oai(b).responses.retrieve(first.id)
        redis_server.start()  # an empty Redis: the record is gone, so: not found, not wrong
        with pytest.raises(openai.BadRequestError, match="previous_response_id"):
            oai(b).responses.create(model="test-model", previous_response_id=first.id,
                                    input="again")


def test_a_tenants_total_limit_holds_across_its_keys_and_gateways(
        redis_server: RedisServer) -> None:
    second_key = "veil-test-key-second-of-tenant"
    with ExitStack() as stack:
        up = stack.enter_context(ServerThread(build_demo_app()))
        settings = settings_for(
            [backend("up", up.url)], {"test-model": ["up"]},
            tenants={"test": {"models": ["*"], "rate_limit": {"requests_per_second": 1000,
                                                              "burst": 1000},
                              "total_rate_limit": {"requests_per_second": 0.001, "burst": 3}}},
            api_keys=[{"name": "one", "tenant": "test", "hash": hash_api_key(TEST_KEY)},
                      {"name": "two", "tenant": "test", "hash": hash_api_key(second_key)}],
            state={"redis_url": redis_server.url})
        gws = [stack.enter_context(gateway_for(settings)) for _ in range(2)]
        got = [httpx.post(gws[i % 2].url + "/v1/chat/completions", json=CHAT, timeout=10,
                          headers={"Authorization": f"Bearer {(TEST_KEY, second_key)[i // 2 % 2]}"}
                          ).status_code for i in range(8)]
    assert got.count(200) == 3, got
    assert all(s == 429 for s in got[3:]), got


@pytest.mark.parametrize("planted", ["not json", "[1, 2]", '{"backend": "demo-openai"}',
                                     '{"backend": "demo-openai", "sealed": "zz"}',
                                     '{"backend": "demo-openai", "sealed": "00"}',
                                     b"\xff\xfe not text"])
def test_a_record_planted_in_redis_is_not_found_never_an_error(
        planted: str | bytes, redis_server: RedisServer, demo: Demo) -> None:
    with replicas(redis_server.url, demo.url, 1) as (gw,):
        created = oai(gw).responses.create(model="test-model", input=f"Remember {EMAIL}")
        client = redis.Redis.from_url(redis_server.url)
        try:
            for name in client.scan_iter("veil:response:*"):
                client.set(name, planted)
        finally:
            client.close()
        with pytest.raises(openai.NotFoundError):
            oai(gw).responses.retrieve(created.id)
        with pytest.raises(openai.BadRequestError, match="previous_response_id"):
            oai(gw).responses.create(model="test-model", previous_response_id=created.id,
                                     input="again")


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("stream", [False, True])
def test_tokens_per_minute_are_taken_from_the_replies_usage(
        shared: bool, stream: bool, redis_server: RedisServer) -> None:
    with ExitStack() as stack:
        up = stack.enter_context(ServerThread(build_demo_app()))
        settings = settings_for(
            [backend("up", up.url)], {"test-model": ["up"]},
            tenants={"test": {"models": ["*"], "rate_limit": {
                "requests_per_second": 1000, "burst": 1000, "tokens_per_minute": 3}}},
            api_keys=[{"name": "test-key", "tenant": "test", "hash": hash_api_key(TEST_KEY)}],
            state={"redis_url": redis_server.url} if shared else {})
        first, second = (stack.enter_context(gateway_for(settings)) for _ in range(2))
        body = {**CHAT, "messages": [{"role": "user", "content": "count these few words"}]}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", first.url + "/v1/chat/completions", json=body,
                          headers=AUTH, timeout=10) as r:
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-tokens"] == "3"
            assert r.headers["x-ratelimit-remaining-tokens"] == "3"  # before this reply
            assert "[DONE]" in r.read().decode() or not stream
        target = second if shared else first  # without Redis each gateway counts its own
        refused = httpx.post(target.url + "/v1/chat/completions", json=CHAT, headers=AUTH,
                             timeout=10)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "tokens_exceeded"
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
        assert float(refused.headers["x-ratelimit-reset-tokens"].removesuffix("s")) > 20
        if shared:  # one bucket, whichever gateway asks
            assert httpx.post(first.url + "/v1/chat/completions", json=CHAT, headers=AUTH,
                              timeout=10).status_code == 429
