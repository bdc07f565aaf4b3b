"""Usage on every request: the tokens the upstream counted, whole replies and streams of each
wire format, in the audit record and in `veil_tokens_total`; OpenAI streams ask the upstream
for their usage, and a client that did not ask never sees it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.demo.upstream import DEMO, DemoState, build_demo_app
from tests.servers import TEST_KEY, ServerThread, backend, gateway_for, settings_for

MODEL = "test-model"
HEADERS = {"Authorization": f"Bearer {TEST_KEY}", "anthropic-version": "2023-06-01"}
REQUESTS: dict[str, tuple[str, dict[str, Any], tuple[str, str]]] = {
    # route: path, body, the upstream's names for input and output tokens
    "chat": ("/v1/chat/completions",
             {"model": MODEL, "messages": [{"role": "user", "content": "count my words"}]},
             ("prompt_tokens", "completion_tokens")),
    "completions": ("/v1/completions", {"model": MODEL, "prompt": "count these words too"},
                    ("prompt_tokens", "completion_tokens")),
    "responses": ("/v1/responses", {"model": MODEL, "input": "count my words please"},
                  ("input_tokens", "output_tokens")),
    "messages": ("/v1/messages", {"model": MODEL, "max_tokens": 64, "messages": [
        {"role": "user", "content": "count my words, Claude"}]}, ("input_tokens", "output_tokens")),
}


@dataclass
class World:
    gateway: ServerThread
    upstream: ServerThread
    audit: Path

    @property
    def demo(self) -> DemoState:
        return self.upstream.app[DEMO]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    (tmp_path / "audit.key").write_text("k" * 64)
    with ServerThread(build_demo_app()) as up:
        settings = settings_for(
            [backend("up", up.url), backend("up-a", up.url, "anthropic")],
            {MODEL: ["up", "up-a"]},
            audit={"enabled": True, "path": str(tmp_path / "audit.jsonl"),
                   "key_file": str(tmp_path / "audit.key")})
        with gateway_for(settings) as gw:
            yield World(gw, up, tmp_path / "audit.jsonl")


def eventually(check: Callable[[], Any], seconds: float = 10) -> Any:
    """The record and the metrics are written as the handler returns, which may be just after
    the client read the last byte."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def upstreams_usage(world: World, path: str, names: tuple[str, str]) -> dict[str, int]:
    """What the upstream counts for the body the gateway forwarded (asked again, whole)."""
    body = {k: v for k, v in world.demo.last_body.items()
            if k not in ("stream", "stream_options")}
    usage = httpx.post(world.upstream.url + path, json=body, timeout=10).json()["usage"]
    return {"input_tokens": usage[names[0]], "output_tokens": usage[names[1]]}


def audited(world: World, request_id: str) -> dict[str, Any] | None:
    if not world.audit.exists():
        return None
    records = [json.loads(line) for line in world.audit.read_text().splitlines()]
    return next((r for r in records if r["request_id"] == request_id), None)


def tokens_metric(world: World) -> dict[str, float]:
    page = httpx.get(world.gateway.url + "/metrics", timeout=10).text
    return {sample.labels["kind"]: sample.value
            for family in text_string_to_metric_families(page)
            if family.name == "veil_tokens" for sample in family.samples
            if sample.name == "veil_tokens_total"
            and sample.labels == {"tenant": "test", "key": "test-key", "model": MODEL,
                                  "kind": sample.labels["kind"]}}


def chunks(stream_text: str) -> list[Any]:
    return [json.loads(line[6:]) for line in stream_text.splitlines()
            if line.startswith("data: {")]


@pytest.mark.parametrize(("route", "stream", "client_asks"), [
    ("chat", False, False), ("chat", True, False), ("chat", True, True),
    ("completions", False, False), ("completions", True, False), ("completions", True, True),
    ("responses", False, False), ("responses", True, False),
    ("messages", False, False), ("messages", True, False),
])
def test_usage_in_audit_and_metrics_is_the_upstreams(world: World, route: str, stream: bool,
                                                     client_asks: bool) -> None:
    path, body, names = REQUESTS[route]
    body = {**body, **({"stream": True} if stream else {}),
            **({"stream_options": {"include_usage": True}} if client_asks else {})}
    with httpx.stream("POST", world.gateway.url + path, json=body, headers=HEADERS,
                      timeout=10) as reply:
        assert reply.status_code == 200
        text = reply.read().decode()
        request_id = reply.headers["X-Request-ID"]
    forwarded = dict(world.demo.last_body)
    expected = upstreams_usage(world, path, names)
    assert expected["input_tokens"] > 0
    assert expected["output_tokens"] > 0

    record = eventually(lambda: audited(world, request_id))
    assert record is not None
    assert record["key"] == "test-key"
    assert record["usage"] == {**expected, "total_tokens": sum(expected.values())}
    assert eventually(lambda: tokens_metric(world) == {"input": expected["input_tokens"],
                                                       "output": expected["output_tokens"]}), \
        tokens_metric(world)

    if not stream:
        usage = json.loads(text)["usage"]
        assert (usage[names[0]], usage[names[1]]) == tuple(expected.values())
    elif route in ("chat", "completions"):
        # the upstream was asked for its usage either way; the client sees it only if it asked
        assert forwarded["stream_options"] == {"include_usage": True}
        assert text.endswith("data: [DONE]\n\n")
        if client_asks:  # unchanged: `usage: null` on each chunk, then the usage chunk
            with_usage = [c for c in chunks(text) if c.get("usage") is not None]
            assert len(with_usage) == 1
            assert with_usage[0]["choices"] == []
            given = with_usage[0]["usage"]
            assert (given[names[0]], given[names[1]]) == tuple(expected.values())
            assert route != "chat" or all("usage" in c for c in chunks(text))  # the demo's
        else:
            assert "usage" not in text
            assert all(c["choices"] for c in chunks(text))


@pytest.mark.parametrize("client_asks", [False, True])
def test_the_openai_sdk_sees_usage_only_when_it_asked(world: World, client_asks: bool) -> None:
    client = openai.OpenAI(base_url=world.gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
    options: Any = {"include_usage": True} if client_asks else openai.NOT_GIVEN
    got = list(client.chat.completions.create(
        model=MODEL, stream=True, stream_options=options,
        messages=[{"role": "user", "content": "stream and count"}]))
    assert world.demo.last_body["stream_options"] == {"include_usage": True}
    text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
    assert text.endswith("Last user message: stream and count")
    expected = upstreams_usage(world, "/v1/chat/completions",
                               ("prompt_tokens", "completion_tokens"))
    with_usage = [c for c in got if c.usage is not None]
    if client_asks:
        assert [(c.usage.prompt_tokens, c.usage.completion_tokens) for c in with_usage] == \
            [tuple(expected.values())]
    else:
        assert with_usage == []
    assert eventually(lambda: tokens_metric(world) == {"input": expected["input_tokens"],
                                                       "output": expected["output_tokens"]})


def test_a_refused_request_records_no_usage(world: World) -> None:
    reply = httpx.post(world.gateway.url + "/v1/chat/completions",
                       json={**REQUESTS["chat"][1], "model": "no-such-model"}, headers=HEADERS,
                       timeout=10)
    assert reply.status_code == 404
    record = eventually(lambda: audited(world, reply.headers["X-Request-ID"]))
    assert record["usage"] is None
    assert record["key"] == "test-key"
    assert tokens_metric(world) == {}
