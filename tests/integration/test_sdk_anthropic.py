"""The official anthropic SDK through the real gateway, streamed and not."""

from __future__ import annotations

import anthropic
import pytest

from tests.conftest import Demo
from tests.servers import TEST_KEY, ServerThread


def client(gateway: ServerThread, key: str = TEST_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def test_messages(gateway: ServerThread, demo: Demo) -> None:
    message = client(gateway).messages.create(
        model="test-model", max_tokens=64, system="You are terse.",
        messages=[{"role": "user", "content": "Hello Claude-compatible"}])
    assert message.content[0].text == \
        "Demo model received 1 messages. Last user message: Hello Claude-compatible"
    assert demo.state.last_headers["x-api-key"] == "upstream-secret"
    assert demo.state.last_headers["anthropic-version"]
    assert TEST_KEY not in str(demo.state.last_headers)
    assert message._request_id is not None
    assert message._request_id.startswith("req_")  # the gateway's own, as in its logs


def test_messages_stream(gateway: ServerThread) -> None:
    with client(gateway).messages.stream(
            model="test-model", max_tokens=64,
            messages=[{"role": "user", "content": [{"type": "text", "text": "stream"}]}]) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
        assert s.request_id == s.response.headers["X-Request-ID"]
    assert len(pieces) > 3
    assert "".join(pieces) == "Demo model received 1 messages. Last user message: stream"
    assert final.stop_reason == "end_turn"


def test_tool_use_stream(gateway: ServerThread) -> None:
    tools = [{"name": "lookup", "description": "d",
              "input_schema": {"type": "object", "properties": {"echo": {"type": "string"}}}}]
    with client(gateway).messages.stream(
            model="test-model", max_tokens=64, tools=tools,
            messages=[{"role": "user", "content": "tool please"}]) as s:
        final = s.get_final_message()
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == {"echo": "tool please"}


def test_errors_are_anthropic_shaped(gateway: ServerThread) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        client(gateway, "nope").messages.create(
            model="test-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as info:
        client(gateway).messages.create(
            model="test-model", max_tokens=5, messages=[{"role": "robot", "content": "x"}])
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["param"] == "messages[0].role"
