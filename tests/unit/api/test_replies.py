"""Restoring SSE streams event by event equals restoring the whole reply, however the model's
text was cut into deltas (placeholders split anywhere), for each wire format."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.api import anthropic, openai
from gateway.api.replies import StreamRestore, restore_body
from gateway.api.sse import SSEDecoder
from gateway.privacy.vault import Vault

TEXT = 'To <PERSON_1> at <EMAIL_1>: card <CREDIT_CARD_1>, not <PERSON_7> or <EMAIL_1'
ARGS = '{"to": "<EMAIL_1>", "name": "<PERSON_1>"}'


def vault() -> Vault:
    v = Vault()
    v.placeholder("PERSON", 'Ann "Nan" O\'Neil')
    v.placeholder("EMAIL", "ann@example.org")
    v.placeholder("CREDIT_CARD", "4111 1111 1111 1111")
    return v


def pieces(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def run(restore: StreamRestore, raw: bytes) -> list[dict[str, object]]:
    out = b"".join(b"".join(restore.rewrite(e)) for e in SSEDecoder().feed(raw))
    return [json.loads(e.data) for e in SSEDecoder().feed(out) if e.data != "[DONE]"]


def chat_stream(content: list[str], args: list[str]) -> bytes:
    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n".encode()

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in content]
    out += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in args]
    out.append(chunk({}, "stop"))
    return b"".join(out) + b"data: [DONE]\n\n"


@given(st.lists(st.integers(0, 500), max_size=30), st.lists(st.integers(0, 500), max_size=20))
def test_chat_content_and_tool_arguments(cuts: list[int], arg_cuts: list[int]) -> None:
    v = vault()
    events = run(StreamRestore(openai.CHAT, v),
                 chat_stream(pieces(TEXT, cuts), pieces(ARGS, arg_cuts)))
    deltas = [e["choices"][0]["delta"] for e in events]  # type: ignore[index]
    content = "".join(d.get("content") or "" for d in deltas)  # type: ignore[union-attr]
    arguments = "".join(c["function"]["arguments"] for d in deltas  # type: ignore[union-attr]
                        for c in d.get("tool_calls") or [])  # type: ignore[union-attr]
    assert content == v.restore(TEXT)
    assert json.loads(arguments) == {"to": "ann@example.org", "name": 'Ann "Nan" O\'Neil'}


@given(st.lists(st.integers(0, 500), max_size=30), st.lists(st.integers(0, 500), max_size=20))
def test_anthropic_text_and_json_deltas(cuts: list[int], json_cuts: list[int]) -> None:
    def event(name: str, body: dict[str, object]) -> bytes:
        return f"event: {name}\ndata: {json.dumps({'type': name, **body})}\n\n".encode()

    raw = b"".join([
        event("message_start", {"message": {"id": "m", "content": []}}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text"}}),
        *[event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
          for p in pieces(TEXT, cuts)],
        event("content_block_stop", {"index": 0}),
        event("content_block_start", {"index": 1, "content_block": {"type": "tool_use"}}),
        *[event("content_block_delta",
                {"index": 1, "delta": {"type": "input_json_delta", "partial_json": p}})
          for p in pieces(ARGS, json_cuts)],
        event("content_block_stop", {"index": 1}),
        event("message_stop", {}),
    ])
    v = vault()
    events = run(StreamRestore(anthropic.MESSAGES, v), raw)
    text = "".join(e["delta"]["text"] for e in events  # type: ignore[index]
                   if e["type"] == "content_block_delta" and e["index"] == 0)
    partial = "".join(e["delta"]["partial_json"] for e in events  # type: ignore[index]
                      if e["type"] == "content_block_delta" and e["index"] == 1)
    # TEXT ends in an incomplete "<EMAIL_1": equality shows the held tail was flushed before
    # its block closed.
    assert text == v.restore(TEXT)
    assert json.loads(partial)["name"] == 'Ann "Nan" O\'Neil'


def test_whole_body_restore_escapes_json_source_fields() -> None:
    body = {"choices": [{"message": {"content": TEXT, "tool_calls": [
        {"function": {"name": "send", "arguments": ARGS}}]}}]}
    out = json.loads(restore_body(json.dumps(body).encode(), vault()))
    message = out["choices"][0]["message"]
    assert message["content"] == vault().restore(TEXT)
    assert json.loads(message["tool_calls"][0]["function"]["arguments"])["name"] == \
        'Ann "Nan" O\'Neil'
