"""Failover before the first byte; timeouts; mid-stream failures; client disconnects."""

from __future__ import annotations

import json
import socket
import time

import httpx2 as httpx
import openai
import pytest

from gateway.demo.upstream import build_demo_app
from tests.integration.faults import FaultyUpstream
from tests.servers import TEST_KEY, ServerThread, backend, gateway_for, settings_for

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def demo_server():
    with ServerThread(build_demo_app()) as server:
        yield server


def test_connection_refused_fails_over(demo_server: ServerThread) -> None:
    settings = settings_for([backend("dead", f"http://127.0.0.1:{closed_port()}"),
                             backend("live", demo_server.url)])
    with gateway_for(settings) as gw:
        r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"].endswith("hi")


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_fails_over(demo_server: ServerThread, status: int) -> None:
    broken = FaultyUpstream("status", status=status)
    with ServerThread(broken.app()) as bad:
        settings = settings_for([backend("bad", bad.url), backend("live", demo_server.url)])
        with gateway_for(settings) as gw:
            r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 200
    assert broken.requests == 1


def test_4xx_is_returned_not_failed_over(demo_server: ServerThread) -> None:
    refusing = FaultyUpstream("status", status=400)
    with ServerThread(refusing.app()) as bad:
        settings = settings_for([backend("bad", bad.url), backend("live", demo_server.url)])
        with gateway_for(settings) as gw:
            r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == \
        "Backend 'bad' refused the request (HTTP 400): upstream says no"
    assert refusing.requests == 1


def test_timeout_fails_over(demo_server: ServerThread) -> None:
    slow = FaultyUpstream("slow", delay=3)
    with ServerThread(slow.app()) as bad:
        settings = settings_for([backend("slow", bad.url, read_timeout_s=0.3),
                                 backend("live", demo_server.url)])
        with gateway_for(settings) as gw:
            started = time.monotonic()
            r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 200
    assert time.monotonic() - started < 2.5


def test_all_backends_down_is_502_envelope() -> None:
    settings = settings_for([backend("a", f"http://127.0.0.1:{closed_port()}"),
                             backend("b", f"http://127.0.0.1:{closed_port()}")])
    with gateway_for(settings) as gw:
        r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 502
    body = r.json()["error"]
    assert body["type"] == "upstream_error"
    assert body["request_id"] == r.headers["X-Request-ID"]


def test_all_backends_slow_is_504() -> None:
    slow = FaultyUpstream("slow", delay=3)
    with ServerThread(slow.app()) as bad:
        settings = settings_for([backend("slow", bad.url, read_timeout_s=0.3)])
        with gateway_for(settings) as gw:
            r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"


def _stream_events(gw: ServerThread) -> list[str]:
    with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                      json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize("mode", ["die_mid_stream", "stall_mid_stream", "end_without_done",
                                  "not_json_event", "garbage_line"])
def test_upstream_failure_mid_stream_ends_with_error_event(mode: str) -> None:
    faulty = FaultyUpstream(mode, delay=3)
    with ServerThread(faulty.app()) as bad:
        settings = settings_for([backend("bad", bad.url, read_timeout_s=0.5)])
        with gateway_for(settings) as gw:
            started = time.monotonic()
            events = _stream_events(gw)
    assert time.monotonic() - started < 2.5  # a clean end, not a hang
    assert len(events) == 3
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "part "
    error = json.loads(events[-1])["error"]
    assert error["code"] == "stream_interrupted"
    assert faulty.requests == 1  # no failover once bytes reached the client


def test_openai_sdk_raises_on_interrupted_stream() -> None:
    faulty = FaultyUpstream("die_mid_stream")
    with ServerThread(faulty.app()) as bad, \
            gateway_for(settings_for([backend("bad", bad.url)])) as gw:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
        stream = c.chat.completions.create(model="test-model", stream=True,
                                           messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.APIError, match="broke mid-stream"):
            list(stream)


def test_client_disconnect_cancels_upstream() -> None:
    endless = FaultyUpstream("endless")
    with ServerThread(endless.app()) as up, \
            gateway_for(settings_for([backend("up", up.url)])) as gw:
        with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=AUTH,
                          json={**CHAT, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)
        # the client hung up; the gateway must close the upstream connection promptly
        assert endless.disconnected.wait(5)


def test_truncated_json_reply_is_502_not_a_200_the_client_cannot_parse() -> None:
    truncated = FaultyUpstream("truncated_json")
    with ServerThread(truncated.app()) as bad, \
            gateway_for(settings_for([backend("cut", bad.url)])) as gw:
        r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == "upstream_invalid_reply"
    assert error["request_id"] == r.headers["X-Request-ID"]
    assert "chatcmpl" not in r.text  # the broken reply itself is not passed on


def test_body_that_stops_coming_is_504_not_a_broken_connection() -> None:
    stalling = FaultyUpstream("stall_body", delay=3)
    with ServerThread(stalling.app()) as bad:
        settings = settings_for([backend("stall", bad.url, read_timeout_s=0.3)])
        with gateway_for(settings) as gw:
            started = time.monotonic()
            r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 2.5
