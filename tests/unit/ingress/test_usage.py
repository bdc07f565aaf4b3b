"""Tokens a reply used, read from each wire format's `usage`, whole or streamed."""

from __future__ import annotations

import json

import pytest

from gateway.api.sse import SSEEvent
from gateway.errors import StreamFormatError
from gateway.ingress.usage import StreamUsage, tokens_used


def event(payload: object, name: str | None = None) -> SSEEvent:
    head = f"event: {name}\n" if name else ""
    return SSEEvent((head + f"data: {json.dumps(payload)}").encode())


@pytest.mark.parametrize(("reply", "tokens"), [
    ({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}, 7),
    ({"usage": {"input_tokens": 10, "output_tokens": 5}}, 15),  # Anthropic
    ({"usage": {"input_tokens": 2, "output_tokens": 3, "total_tokens": 5}}, 5),  # Responses
    ({"usage": None}, 0), ({}, 0), ([], 0), ({"usage": {"total_tokens": -4}}, 0),
])
def test_whole_replies(reply: object, tokens: int) -> None:
    assert tokens_used(reply) == tokens


def test_streams_of_each_format() -> None:
    relay = lambda e: [e.encode()]  # noqa: E731
    openai = StreamUsage()
    observed = openai.observing(relay)
    observed(event({"choices": [{"delta": {"content": "hi"}}]}))
    observed(event({"choices": [], "usage": {"total_tokens": 9}}))
    observed(SSEEvent(b"data: [DONE]"))
    assert openai.total == 9

    anthropic = StreamUsage()
    observed = anthropic.observing(relay)
    observed(event({"type": "message_start", "message": {"usage": {"input_tokens": 12,
                                                                   "output_tokens": 1}}}))
    observed(event({"type": "message_delta", "usage": {"output_tokens": 30}}))
    assert anthropic.total == 42

    responses = StreamUsage()
    responses.observing(relay)(event({"type": "response.completed", "response": {
        "usage": {"input_tokens": 4, "output_tokens": 6, "total_tokens": 10}}}))
    assert responses.total == 10


def test_an_event_that_is_not_json_is_refused_not_counted() -> None:
    usage = StreamUsage()
    with pytest.raises(StreamFormatError):
        usage.observing(lambda e: [e.encode()])(SSEEvent(b"data: {not json"))
    assert usage.total == 0
