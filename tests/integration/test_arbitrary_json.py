"""Arbitrary JSON anywhere in a request, under keys the gateway knows and keys it has never
heard of: no canary string, key or number reaches the upstream unmasked (or the request is
refused). Hypothesis generates the values and where they go; the real gateway and the demo
upstream do the rest."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.demo.upstream import DEMO, build_demo_app
from tests.integration.test_leak import encodings
from tests.servers import TEST_KEY, UNLIMITED, UPSTREAM_SECRET, ServerThread, demo_gateway

# Canaries the pattern tier finds on their own: emails, SSNs, AWS keys; card numbers also as
# JSON integers. Hypothesis picks among them; each is unique enough not to occur by chance.
EMAILS = [f"hyp.canary{i}.qzx@example.org" for i in range(4)]
SSNS = ["536-22-1234", "219-09-9999"]
AWS = ["AKIAQZXWVUTSRQPONML2"]
CARDS = [4539148803436467, 4916338506082832]
STRINGS = EMAILS + SSNS + AWS
ALL_SECRETS = [*STRINGS, *(str(c) for c in CARDS)]

words = st.text(alphabet="abc xyz", max_size=8)
canary_text = st.builds(lambda a, c, b: f"{a} {c} {b}".strip(), words, st.sampled_from(STRINGS),
                        words)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000),
                   st.floats(allow_nan=False, allow_infinity=False, width=32), words,
                   canary_text, st.sampled_from(CARDS))
key = st.one_of(st.sampled_from(["type", "text", "content", "input", "value", "id", "name",
                                 "x-extra"]), st.sampled_from(EMAILS), words)
json_values = st.recursive(scalar, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(key, children, max_size=4)),
    max_leaves=12)

Place = Callable[[dict[str, Any], Any, str], None]


def _top(body: dict[str, Any], value: Any, name: str) -> None:
    body[name] = value


def _in_message(body: dict[str, Any], value: Any, name: str) -> None:
    body["messages"][-1][name] = value


def _in_part(body: dict[str, Any], value: Any, name: str) -> None:
    body["messages"][-1]["content"] = [{"type": "text", "text": "hello", name: value}]


def _unknown_part(body: dict[str, Any], value: Any, name: str) -> None:
    body["messages"][-1]["content"] = [{"type": "video_frame", name: value}]


def _escaped(value: Any) -> str:
    """JSON as a hostile (or Go) encoder writes it: '@' as \\u0040, so the raw text of the
    string hides the address from a scan that does not decode it."""
    return json.dumps(value).replace("@", "\\u0040")


def _tool_arguments(body: dict[str, Any], value: Any, name: str) -> None:
    body["messages"].append({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "f", "arguments": _escaped({name: value})}}]})
    body["messages"].append({"role": "tool", "tool_call_id": "call_1",
                             "content": json.dumps([value])})


def _tool_schema(body: dict[str, Any], value: Any, name: str) -> None:
    body["tools"] = [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {name: value}}}}]


def _tool_use_input(body: dict[str, Any], value: Any, name: str) -> None:
    body["messages"] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f",
                                           "input": {name: value}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "ok"}],
                                      name: value}]}]


def _responses_item(body: dict[str, Any], value: Any, name: str) -> None:
    body["input"] = [{"role": "user", "content": [{"type": "input_text", "text": "hi",
                                                    name: value}]},
                     {"type": "function_call", "call_id": "c1", "name": "f",
                      "arguments": _escaped({name: value})},
                     {"type": "function_call_output", "call_id": "c1",
                      "output": json.dumps(value)},
                     {"type": "brand_new_item", name: value}]


CHAT = ("/v1/chat/completions", {"model": "test-model",
                                 "messages": [{"role": "user", "content": "hi"}]},
        [_top, _in_message, _in_part, _unknown_part, _tool_arguments, _tool_schema])
MESSAGES = ("/v1/messages", {"model": "test-model", "max_tokens": 16,
                             "messages": [{"role": "user", "content": "hi"}]},
            [_top, _in_message, _in_part, _unknown_part, _tool_use_input])
COUNT_TOKENS = ("/v1/messages/count_tokens", {"model": "test-model",
                                              "messages": [{"role": "user", "content": "hi"}]},
                [_top, _in_part, _tool_use_input])
RESPONSES = ("/v1/responses", {"model": "test-model", "input": "hi"}, [_top, _responses_item])
COMPLETIONS = ("/v1/completions", {"model": "test-model", "prompt": "hi"}, [_top])
EMBEDDINGS = ("/v1/embeddings", {"model": "test-model", "input": "hi"}, [_top])
ENDPOINTS = [CHAT, MESSAGES, COUNT_TOKENS, RESPONSES, COMPLETIONS, EMBEDDINGS]


def visible(raw: bytes) -> str:
    """Everything a model could read in a body: the raw text, and every string and key once
    decoded, JSON held inside strings decoded too."""
    out = [raw.decode("utf-8", "replace")]

    def walk(value: Any) -> None:
        if isinstance(value, str):
            out.append(value)
            if value.lstrip()[:1] in ("{", "[", '"'):
                with contextlib.suppress(ValueError):
                    walk(json.loads(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                out.append(k)
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append(str(value))

    with contextlib.suppress(ValueError):
        walk(json.loads(raw))
    return "\n".join(out)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServerThread, ServerThread]]:
    with ServerThread(build_demo_app(required_key=UPSTREAM_SECRET)) as demo, \
            demo_gateway(demo.url, default_rate_limit=UNLIMITED) as gateway:
        yield demo, gateway


@pytest.mark.parametrize(("path", "base", "places"), ENDPOINTS,
                         ids=[e[0] for e in ENDPOINTS])
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_canary_leaves_through_arbitrary_json(servers: tuple[ServerThread, ServerThread],
                                                 path: str, base: dict[str, Any],
                                                 places: list[Place], data: st.DataObject) -> None:
    demo, gateway = servers
    body = json.loads(json.dumps(base))
    place = data.draw(st.sampled_from(places))
    place(body, data.draw(json_values), data.draw(key.filter(bool)))
    state = demo.app[DEMO]
    state.received.clear()
    r = httpx.post(gateway.url + path, content=json.dumps(body),
                   headers={"Authorization": f"Bearer {TEST_KEY}",
                            "Content-Type": "application/json"})
    assert r.status_code < 500, r.text
    sent = "\n".join(visible(raw) for raw in state.received)
    for secret in ALL_SECRETS:
        assert not any(form in sent for form in encodings(secret)), (secret, r.status_code)
