"""Each backend's own vocabulary, against a recording upstream (the demo server, which answers
with the model its body names, also on Azure OpenAI's routes): model names mapped on the way
up and restored on the way back, static headers, `format: azure-openai` (deployment routes,
api-version, `api-key`, its v1 API for Responses, its probe), and the upstream's request id
and rate-limit headers passed back, vetted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest
from aiohttp import web

from gateway.demo import upstream as demo
from tests.servers import TEST_KEY, ServerThread, backend, gateway_for, settings_for

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
AZURE_KEY = "azure-secret-key"
ORG = "org-from-the-environment"


@dataclass(frozen=True)
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class Recording:
    """The demo upstream, recording every request; its replies carry `reply_headers`."""

    reply_headers: dict[str, str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        app = demo.build_demo_app()
        deployment = "/openai/deployments/{deployment}/"
        app.router.add_post(deployment + "chat/completions", demo.chat_completions)
        app.router.add_post(deployment + "completions", demo.completions)
        app.router.add_post(deployment + "embeddings", demo.embeddings)
        app.router.add_post("/openai/v1/responses", demo.responses)
        app.router.add_get("/openai/models", demo.models)

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.seen.append(Seen(request.method, request.path_qs,
                                  {k.lower(): v for k, v in request.headers.items()},
                                  await request.read()))
            return await handler(request)

        async def stamp(_: web.Request, response: web.StreamResponse) -> None:
            response.headers.update(self.reply_headers)

        app.middlewares.append(record)
        app.on_response_prepare.append(stamp)
        return app

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]


@contextmanager
def gateway(recording: Recording, environ: dict[str, str] | None = None,
            **extra: Any) -> Iterator[ServerThread]:
    """A gateway whose `test-model` is served by one backend on `recording`, with `extra`."""
    with ServerThread(recording.app()) as up:
        settings = settings_for([backend("up", up.url, **extra)], {"test-model": ["up"]})
        with gateway_for(settings, environ=environ or {}) as gw:
            yield gw


def sdk(gw: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)


def model_of(seen: Seen) -> Any:
    return httpx.Response(200, content=seen.body).json()["model"]


def every_openai_call(client: openai.OpenAI) -> list[str]:
    """Chat, completions, embeddings and Responses, whole and streamed: the model each reply
    (and every streamed event that names one) told the client."""
    told = [client.chat.completions.create(model="test-model", messages=[
        {"role": "user", "content": "hi"}]).model]
    told += [c.model for c in client.chat.completions.create(
        model="test-model", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}])]
    told.append(client.completions.create(model="test-model", prompt="hi").model)
    told += [c.model for c in client.completions.create(model="test-model", prompt="hi",
                                                        stream=True)]
    told.append(client.embeddings.create(model="test-model", input="hi").model)
    told.append(client.responses.create(model="test-model", input="hi", store=False).model)
    told += [e.response.model for e in client.responses.create(
        model="test-model", input="hi", store=False, stream=True) if hasattr(e, "response")]
    return told


def test_a_mapped_model_goes_up_by_the_backends_name_and_comes_back_by_the_clients() -> None:
    recording = Recording()
    with gateway(recording, upstream_models={"test-model": "org/gpt-4o-mini"}) as gw:
        told = every_openai_call(sdk(gw))
    assert set(told) == {"test-model"}
    assert len(told) > 10
    posts = recording.posts()
    assert {model_of(s) for s in posts} == {"org/gpt-4o-mini"}
    assert {s.path_qs for s in posts} == {"/v1/chat/completions", "/v1/completions",
                                          "/v1/embeddings", "/v1/responses"}


def test_without_a_mapping_the_backends_own_answer_passes() -> None:
    recording = Recording()
    with gateway(recording) as gw:
        reply = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert reply.json()["model"] == "test-model"  # the demo echoes what it was sent
    assert model_of(recording.posts()[0]) == "test-model"


def test_a_mapped_model_with_placeholders_is_restored_and_renamed_in_one_reply() -> None:
    recording = Recording()
    with gateway(recording, upstream_models={"test-model": "upstream-name"}) as gw:
        reply = sdk(gw).chat.completions.create(model="test-model", messages=[
            {"role": "user", "content": "mail jane.doe@example.com"}])
    assert reply.model == "test-model"
    assert reply.choices[0].message.content is not None
    assert reply.choices[0].message.content.endswith("mail jane.doe@example.com")
    assert b"jane.doe@example.com" not in recording.posts()[0].body


def test_anthropic_messages_are_renamed_whole_and_in_message_start() -> None:
    recording = Recording()
    with gateway(recording, fmt="anthropic",
                 upstream_models={"test-model": "claude-upstream-name"}) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key=TEST_KEY, max_retries=0)
        whole = client.messages.create(model="test-model", max_tokens=16,
                                       messages=[{"role": "user", "content": "hi"}])
        with client.messages.stream(model="test-model", max_tokens=16,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            streamed = stream.get_final_message()
    assert (whole.model, streamed.model) == ("test-model", "test-model")
    assert {model_of(s) for s in recording.posts()} == {"claude-upstream-name"}


AZURE = {"fmt": "azure-openai", "api_version": "2024-10-21", "api_key_env": "AZ_KEY",
         "upstream_models": {"test-model": "my-4o-deployment"},
         "headers": {"OpenAI-Organization": {"env": "ORG"}, "X-Team": {"value": "search"}}}
AZURE_ENV = {"AZ_KEY": AZURE_KEY, "ORG": ORG}


def test_azure_openai_paths_key_and_headers() -> None:
    recording = Recording()
    with gateway(recording, AZURE_ENV, **AZURE) as gw:
        told = every_openai_call(sdk(gw))
    assert set(told) == {"test-model"}
    posts = recording.posts()
    deployment = "/openai/deployments/my-4o-deployment/"
    assert {s.path_qs for s in posts} == {
        deployment + "chat/completions?api-version=2024-10-21",
        deployment + "completions?api-version=2024-10-21",
        deployment + "embeddings?api-version=2024-10-21",
        "/openai/v1/responses"}
    for seen in posts:
        assert seen.headers["api-key"] == AZURE_KEY
        assert "authorization" not in seen.headers
        assert seen.headers["openai-organization"] == ORG
        assert seen.headers["x-team"] == "search"
    assert {model_of(s) for s in posts} == {"my-4o-deployment"}


def test_azure_openai_without_a_mapping_uses_the_model_name_as_deployment() -> None:
    recording = Recording()
    with gateway(recording, AZURE_ENV, **{**AZURE, "upstream_models": {}}) as gw:
        assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT,
                          headers=AUTH).status_code == 200
    assert recording.posts()[0].path_qs == \
        "/openai/deployments/test-model/chat/completions?api-version=2024-10-21"


def test_azure_openai_is_not_an_anthropic_backend() -> None:
    with gateway(Recording(), AZURE_ENV, **AZURE) as gw:
        reply = httpx.post(gw.url + "/v1/messages", headers=AUTH, json={
            "model": "test-model", "max_tokens": 8, "messages": [{"role": "user",
                                                                  "content": "hi"}]})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "model_not_found"


def test_azure_openai_probe_uses_its_route_version_and_key() -> None:
    recording = Recording()
    with gateway(recording, AZURE_ENV, **AZURE,
                 health_check={"interval_s": 0.2, "timeout_s": 1}) as gw:
        deadline = time.monotonic() + 10
        while not any(s.method == "GET" for s in recording.seen) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        ready = httpx.get(gw.url + "/readyz").json()
    probe = next(s for s in recording.seen if s.method == "GET")
    assert probe.path_qs == "/openai/models?api-version=2024-10-21"
    assert probe.headers["api-key"] == AZURE_KEY
    assert probe.headers["x-team"] == "search"
    assert ready["models"]["test-model"]["usable"] == ["up"]


UPSTREAM_HEADERS = {
    "x-request-id": "req_7f3a9c0e2b",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-remaining-tokens": "149984",
    "x-ratelimit-reset-tokens": "6m0s",
    "anthropic-ratelimit-tokens-remaining": "4000",
    "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:30Z",
    "retry-after": "3",
}


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_request_id_and_rate_limits_reach_the_client(stream: bool) -> None:
    recording = Recording(dict(UPSTREAM_HEADERS))
    with gateway(recording) as gw:
        reply = httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": stream},
                           headers=AUTH)
    headers = reply.headers
    assert reply.status_code == 200
    assert headers["x-upstream-request-id"] == "req_7f3a9c0e2b"
    assert headers["x-request-id"] != "req_7f3a9c0e2b"  # the gateway's own
    assert headers["x-upstream-ratelimit-limit-requests"] == "10000"
    assert headers["x-upstream-ratelimit-remaining-requests"] == "9999"
    assert headers["x-upstream-ratelimit-reset-requests"] == "6ms"
    assert headers["x-upstream-ratelimit-remaining-tokens"] == "149984"
    assert headers["x-upstream-ratelimit-reset-tokens"] == "6m0s"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "4000"
    assert headers["anthropic-ratelimit-tokens-reset"] == "2026-01-01T00:00:30Z"
    assert headers["retry-after"] == "3"
    # The unprefixed names are the caller's own quota at the gateway (default_rate_limit).
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] != "9999"


@pytest.mark.parametrize(("fmt", "header"), [("anthropic", "request-id"),
                                        ("azure-openai", "apim-request-id")])
def test_each_formats_request_id_header_is_passed_back(fmt: str, header: str) -> None:
    recording = Recording({header: "3f2b8c1e-0d4a-4e6b-9a7c-1b2c3d4e5f60",
                           "x-request-id": "the-other-one"})
    extra = AZURE if fmt == "azure-openai" else {"fmt": fmt}
    path, body = ("/v1/messages", {**CHAT, "max_tokens": 8}) if fmt == "anthropic" \
        else ("/v1/chat/completions", CHAT)
    with gateway(recording, AZURE_ENV, **extra) as gw:
        reply = httpx.post(gw.url + path, json=body, headers=AUTH)
    assert reply.status_code == 200
    assert reply.headers["x-upstream-request-id"] == "3f2b8c1e-0d4a-4e6b-9a7c-1b2c3d4e5f60"


HOSTILE = {
    "x-request-id": "Call +1 555 0100 for support",  # free text
    "x-ratelimit-remaining-tokens": "9" * 4000,  # huge
    "x-ratelimit-reset-tokens": "soon, friend",
    "anthropic-ratelimit-requests-reset": "tomorrow at noon",
    "retry-after": "never",
    "x-upstream-secret": "not-relayed",
    "set-cookie": "session=abc",
}


@pytest.mark.parametrize("stream", [False, True])
def test_hostile_upstream_header_values_are_dropped(stream: bool,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    media = "text/event-stream" if stream else "application/json"
    recording = Recording({**HOSTILE, "content-type": f"{media}; note=hello-there"})
    with gateway(recording) as gw:
        reply = httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": stream},
                           headers=AUTH)
    assert reply.status_code == 200
    logged = capsys.readouterr().err
    assert '"header":"x-request-id"' in logged
    assert "upstream_header_dropped" in logged
    assert "Call +1" not in logged
    assert "tomorrow at noon" not in logged
    values = " ".join(f"{k}: {v}" for k, v in reply.headers.items())
    for hostile in ("Call +1", "9" * 20, "soon, friend", "tomorrow", "never", "hello-there",
                    "not-relayed", "session=abc"):
        assert hostile not in values
    assert "x-upstream-request-id" not in reply.headers
    assert reply.headers["content-type"] == media
