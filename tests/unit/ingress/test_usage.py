"""Tokens a reply used, read from each wire format's `usage`, whole or streamed; and the usage
chunk the gateway asked for, hidden from a client that did not."""

from __future__ import annotations

import json

import pytest

from gateway.api.openai import CHAT, COMPLETIONS, RESPONSES
from gateway.api.sse import SSEEvent
from gateway.errors import StreamFormatError
from gateway.ingress.usage import Usage, UsageCounter, usage_of


def event(payload: object, name: str | None = None) -> SSEEvent:
    head = f"event: {name}\n" if name else ""
    return SSEEvent((head + f"data: {json.dumps(payload)}\n").encode())


def relay(e: SSEEvent) -> list[bytes]:
    return [e.encode()]


@pytest.mark.parametrize(("reply", "usage"), [
    ({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
     Usage(3, 4, 7)),
    ({"usage": {"input_tokens": 10, "output_tokens": 5}}, Usage(10, 5, 15)),  # Anthropic
    ({"usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 20}}, Usage(130, 5, 135)),
    ({"usage": {"input_tokens": 2, "output_tokens": 3, "total_tokens": 5}},
     Usage(2, 3, 5)),  # Responses
    ({"usage": {"prompt_tokens": 6, "total_tokens": 6}}, Usage(6, 0, 6)),  # embeddings
    # a proxy's Anthropic-style extras on an OpenAI count, which includes them already
    ({"usage": {"prompt_tokens": 50, "completion_tokens": 2, "total_tokens": 52,
                "cache_read_input_tokens": 40}}, Usage(50, 2, 52)),
    ({"usage": None}, None), ({}, None), ([], None), ({"usage": {"total_tokens": -4}}, None),
    ({"usage": {"prompt_tokens": True}}, None),
])
def test_whole_replies(reply: object, usage: Usage | None) -> None:
    assert usage_of(reply) == usage
    counter = UsageCounter()
    counter.observe_reply(reply)
    assert counter.seen == usage


def test_streams_of_each_format() -> None:
    openai = UsageCounter()
    observed = openai.observing(relay)
    observed(event({"choices": [{"delta": {"content": "hi"}}], "usage": None}))
    observed(event({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 5,
                                             "total_tokens": 9}}))
    observed(SSEEvent(b"data: [DONE]\n"))
    assert openai.seen == Usage(4, 5, 9)

    anthropic = UsageCounter()
    observed = anthropic.observing(relay)
    observed(event({"type": "message_start", "message": {"usage": {
        "input_tokens": 12, "cache_read_input_tokens": 3, "output_tokens": 1}}},
        "message_start"))
    observed(event({"type": "message_delta", "usage": {"output_tokens": 30}}, "message_delta"))
    assert anthropic.seen == Usage(15, 30, 45)

    responses = UsageCounter()
    observed = responses.observing(relay)
    observed(event({"type": "response.created", "response": {"usage": None}}))
    observed(event({"type": "response.completed", "response": {
        "usage": {"input_tokens": 4, "output_tokens": 6, "total_tokens": 10}}}))
    assert responses.seen == Usage(4, 6, 10)


def test_a_stream_without_usage_says_so() -> None:
    counter = UsageCounter()
    counter.observing(relay)(event({"choices": [{"delta": {"content": "usage"}}]}))
    assert counter.seen is None


def test_the_usage_the_gateway_asked_for_is_counted_then_hidden() -> None:
    counter = UsageCounter(hide=True)
    observed = counter.observing(relay)
    content = observed(event({"id": "c", "choices": [{"delta": {"content": "hi"}}],
                              "usage": None}))
    assert [json.loads(content[0].removeprefix(b"data: "))] == [
        {"id": "c", "choices": [{"delta": {"content": "hi"}}]}]
    assert observed(event({"choices": [], "usage": {"prompt_tokens": 1, "total_tokens": 1}})) \
        == []
    assert observed(SSEEvent(b"data: [DONE]\n")) == [b"data: [DONE]\n\n"]
    assert counter.seen == Usage(1, 0, 1)


def test_an_empty_chunk_without_usage_is_not_taken_for_the_usage_chunk() -> None:
    """Azure sends its prompt filter results in a chunk without choices: it stays."""
    observed = UsageCounter(hide=True).observing(relay)
    kept = observed(event({"choices": [], "prompt_filter_results": [], "usage": None}))
    assert json.loads(kept[0].removeprefix(b"data: ")) == {"choices": [],
                                                           "prompt_filter_results": []}


def test_hidden_usage_keeps_the_events_other_fields() -> None:
    observed = UsageCounter(hide=True).observing(relay)
    raw = b"id: 7\ndata: " + json.dumps({"choices": [{}], "usage": {"total_tokens": 2}}
                                        ).encode() + b"\n"
    assert observed(SSEEvent(raw)) == [b'id: 7\ndata: {"choices":[{}]}\n\n']


def test_an_event_that_is_not_json_is_refused_not_counted() -> None:
    counter = UsageCounter()
    with pytest.raises(StreamFormatError):
        counter.observing(relay)(SSEEvent(b"data: {not json, usage\n"))
    assert counter.seen is None


@pytest.mark.parametrize(("endpoint", "body", "asked", "options"), [
    (CHAT, {}, True, {"include_usage": True}),
    (CHAT, {"stream_options": {"include_usage": False}}, True, {"include_usage": True}),
    (CHAT, {"stream_options": {"include_obfuscation": False}}, True,
     {"include_obfuscation": False, "include_usage": True}),
    (CHAT, {"stream_options": {"include_usage": True}}, False, {"include_usage": True}),
    (COMPLETIONS, {}, True, {"include_usage": True}),
    (RESPONSES, {}, False, None),  # Responses' streams always carry their usage
])
def test_the_gateway_asks_for_usage_unless_the_client_did(
        endpoint: object, body: dict[str, object], asked: bool, options: object) -> None:
    assert endpoint.ask_for_usage(body) is asked  # type: ignore[attr-defined]
    assert body.get("stream_options") == options
