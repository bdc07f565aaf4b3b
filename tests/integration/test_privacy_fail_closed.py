"""Refusals on the privacy path: nothing reaches the model, the client gets a clear envelope."""

from __future__ import annotations

import httpx2 as httpx
from aiohttp import web

from tests.conftest import Demo
from tests.servers import (
    TEST_KEY,
    TEST_POLICY,
    ServerThread,
    backend,
    demo_backend,
    gateway_for,
    settings_for,
)

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
CARD = "4111 1111 1111 1111"


def test_block_action_refuses_and_forwards_nothing(demo: Demo) -> None:
    settings = settings_for([demo_backend("d", demo.url)],
                            policy={**TEST_POLICY, "actions": {"CREDIT_CARD": "block"}})
    with gateway_for(settings) as gw:
        r = httpx.post(gw.url + "/v1/chat/completions", headers=AUTH, json={
            "model": "test-model", "messages": [{"role": "user", "content": f"card {CARD}"}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "sensitive_data_blocked"
    assert "CREDIT_CARD" in error["message"]
    assert "actions.CREDIT_CARD=block" in error["message"]
    assert r.headers["X-Veil-Policy"].startswith("sha256:")
    assert CARD not in r.text
    assert demo.state.last_body is None


def test_policy_without_detectors_forwards_verbatim(demo: Demo) -> None:
    settings = settings_for([demo_backend("d", demo.url)],
                            policy={**TEST_POLICY, "detectors": {"builtin": []}})
    with gateway_for(settings) as gw:
        httpx.post(gw.url + "/v1/chat/completions", headers=AUTH, json={
            "model": "test-model", "messages": [{"role": "user", "content": f"card {CARD}"}]})
    assert demo.state.last_body["messages"][0]["content"] == f"card {CARD}"


def test_unparseable_stream_event_fails_closed(demo: Demo) -> None:
    """An upstream event that cannot be restored ends the stream with an error event."""
    async def broken(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "<EMA"}}]}\n\n')
        await response.write(b"data: not json at all\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", broken)
    with ServerThread(app) as up, gateway_for(settings_for([backend("b", up.url)])) as gw, \
            httpx.stream("POST", gw.url + "/v1/chat/completions", headers=AUTH, json={
                "model": "test-model", "stream": True,
                "messages": [{"role": "user", "content": "mail a@b.example"}]}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert "not json" not in "".join(lines)
    assert '"stream_interrupted"' in lines[-1]


def test_plugin_entity_masked_and_restored(demo: Demo) -> None:
    settings = settings_for([demo_backend("d", demo.url)],
                            policy={**TEST_POLICY, "detectors": {"builtin": ["patterns"],
                                                                 "plugins": ["employee_id"]}})
    with gateway_for(settings) as gw:
        r = httpx.post(gw.url + "/v1/chat/completions", headers=AUTH, json={
            "model": "test-model",
            "messages": [{"role": "user", "content": "Badge EMP-100003-3 lost"}]})
    assert demo.state.last_body["messages"][0]["content"] == "Badge <EMPLOYEE_ID_1> lost"
    assert r.json()["choices"][0]["message"]["content"].endswith("Badge EMP-100003-3 lost")
