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


# --- restore that cannot corrupt --------------------------------------------------------------

JSON_DOC = '{"name": "<PERSON_1>", "contact": {"card": "<CREDIT_CARD_1>"}, "tags": ["<EMAIL_1>"]}'


def test_go_style_escaped_upstreams_are_restored() -> None:
    """Go's encoder (Ollama) writes '<' as \\u003c: restore works on the decoded value."""
    body = {"choices": [{"message": {"content": "Hi <PERSON_1>"}}]}
    raw = json.dumps(body).replace("<", "\\u003c").replace(">", "\\u003e").encode()
    assert b"<" not in raw
    out = json.loads(restore_body(raw, vault()))
    assert out["choices"][0]["message"]["content"] == 'Hi Ann "Nan" O\'Neil'


def test_placeholders_the_client_typed_stay_as_typed() -> None:
    v = Vault(reserved=frozenset({"<EMAIL_1>", "<EMAIL_3>"}))
    assert v.placeholder("EMAIL", "ann@example.org") == "<EMAIL_2>"
    assert v.placeholder("EMAIL", "bob@example.org") == "<EMAIL_4>"
    assert v.restore("<EMAIL_1> <EMAIL_2> <EMAIL_3> <EMAIL_4>") == \
        "<EMAIL_1> ann@example.org <EMAIL_3> bob@example.org"


def test_content_that_is_a_json_document_stays_valid_json() -> None:
    body = {"choices": [{"message": {"content": JSON_DOC}}]}
    out = json.loads(restore_body(json.dumps(body).encode(), vault()))
    document = json.loads(out["choices"][0]["message"]["content"])
    assert document == {"name": 'Ann "Nan" O\'Neil',
                        "contact": {"card": "4111 1111 1111 1111"},
                        "tags": ["ann@example.org"]}


def test_prose_is_restored_unescaped() -> None:
    body = {"choices": [{"message": {"content": "Dear <PERSON_1>, thanks."}}]}
    out = json.loads(restore_body(json.dumps(body).encode(), vault()))
    assert out["choices"][0]["message"]["content"] == 'Dear Ann "Nan" O\'Neil, thanks.'


@given(st.lists(st.integers(0, 500), max_size=30), st.booleans())
def test_streamed_json_content_stays_valid_json(cuts: list[int], asked: bool) -> None:
    """With `response_format: json_*` (asked) or without (the content opens a JSON document),
    a streamed JSON reply is still JSON once values with quotes are restored into it."""
    v = vault()
    leading = "" if asked else "  \n"
    events = run(StreamRestore(openai.CHAT, v, json_reply=asked),
                 chat_stream(pieces(leading + JSON_DOC, cuts), []))
    content = "".join(e["choices"][0]["delta"].get("content") or ""  # type: ignore[index,union-attr]
                      for e in events)
    assert json.loads(content)["name"] == 'Ann "Nan" O\'Neil'


def test_anthropic_citations_are_restored_streamed_and_not() -> None:
    v = vault()
    citation = {"type": "char_location", "cited_text": "Ann lives at <EMAIL_1>",
                "document_index": 0, "start_char_index": 0, "end_char_index": 9}
    raw = (b"event: content_block_delta\ndata: " + json.dumps({
        "type": "content_block_delta", "index": 0,
        "delta": {"type": "citations_delta", "citation": citation}}).encode() + b"\n\n")
    events = run(StreamRestore(anthropic.MESSAGES, v), raw)
    assert events[0]["delta"]["citation"]["cited_text"] == \
        "Ann lives at ann@example.org"  # type: ignore[index]
    body = {"content": [{"type": "text", "text": "<PERSON_1> does.", "citations": [citation]}]}
    out = json.loads(restore_body(json.dumps(body).encode(), v))
    assert out["content"][0]["citations"][0]["cited_text"] == "Ann lives at ann@example.org"


def test_responses_deltas_of_every_kind_are_restored() -> None:
    """Reasoning summaries, refusals and custom tool input stream as `*.delta` events too."""
    v = vault()

    def event(kind: str, **fields: object) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()

    where = {"item_id": "rs_1", "output_index": 0, "summary_index": 0}
    raw = b"".join([
        event("response.reasoning_summary_text.delta", **where, delta="About <PERS"),
        event("response.reasoning_summary_text.delta", **where, delta="ON_1>"),
        event("response.reasoning_summary_text.done", **where, text="About <PERSON_1>"),
        event("response.refusal.delta", item_id="m", output_index=1, content_index=0,
              delta="No, <EMAIL_1>."),
    ])
    events = run(StreamRestore(openai.RESPONSES, v), raw)
    summary = "".join(str(e["delta"]) for e in events
                      if e["type"] == "response.reasoning_summary_text.delta")
    assert summary == 'About Ann "Nan" O\'Neil'
    assert events[-2]["text"] == 'About Ann "Nan" O\'Neil'
    assert events[-1]["delta"] == "No, ann@example.org."
