"""The structure walk: what is data, what is structural, and how rewritten data goes back into
the body (keys renamed in place, numbers that become text, JSON inside strings re-serialised
only when something in it changed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.api import anthropic, openai
from gateway.api.structure import MAX_DEPTH, MAX_VALUES, Scan, walk_body
from gateway.errors import InvalidRequest

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def chat(**fields: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(CHAT)), **fields}


def rewrite(scan: Scan, change: dict[str, str]) -> None:
    """What the privacy stage does: set the slots whose text changes, then finish."""
    for slot in scan.slots:
        new = change.get(slot.text)
        if new is not None:
            slot.set(new)
    scan.finish()


def test_declared_text_and_unknown_fields_are_data() -> None:
    body = chat(user="u-1", metadata={"owner": "o"}, vendor_extension={"deep": ["d"]})
    texts = walk_body(openai.CHAT.structure, body).texts
    assert texts == ["hi", "u-1", "owner", "o", "vendor_extension", "deep", "d"]


def test_structural_values_are_not_data() -> None:
    body = chat(temperature=0.2, stream=True, tool_choice="auto", reasoning_effort="low",
                messages=[{"role": "tool", "tool_call_id": "call_1", "content": "r"}])
    assert walk_body(openai.CHAT.structure, body).texts == ["r"]


def test_enumerations_outside_their_vocabulary_are_data() -> None:
    body = chat(reasoning_effort="ask jane@example.org")
    assert "ask jane@example.org" in walk_body(openai.CHAT.structure, body).texts


def test_fields_are_walked_in_declaration_order() -> None:
    """The system prompt before the messages, however the client orders its keys, so the
    numbering of placeholders does not depend on key order."""
    body = {"messages": [{"role": "user", "content": "second"}], "max_tokens": 5,
            "system": "first", "model": "m"}
    assert walk_body(anthropic.MESSAGES.structure, body).texts == ["first", "second"]


def test_free_form_keys_are_renamed_in_place_keeping_order() -> None:
    block = {"type": "tool_use", "id": "toolu_1", "name": "f",
             "input": {"a": 1, "ann@example.org": "x", "z": 2}}
    body = {"model": "m", "max_tokens": 5,
            "messages": [{"role": "assistant", "content": [block]}]}
    rewrite(walk_body(anthropic.MESSAGES.structure, body), {"ann@example.org": "<EMAIL_1>"})
    assert list(block["input"]) == ["a", "<EMAIL_1>", "z"]


def test_keys_that_collide_once_masked_are_refused() -> None:
    body = chat(metadata={"a@example.org": "1", "b@example.org": "2"})
    scan = walk_body(openai.CHAT.structure, body)
    with pytest.raises(InvalidRequest, match="become the same") as caught:
        rewrite(scan, {"a@example.org": "[REDACTED:EMAIL]", "b@example.org": "[REDACTED:EMAIL]"})
    assert caught.value.param == "metadata"


def test_numbers_in_free_form_json_are_scanned_as_text() -> None:
    block = {"type": "tool_use", "id": "t", "name": "f", "input": {"card": 4111111111111111,
                                                                   "count": 3}}
    body = {"model": "m", "max_tokens": 5,
            "messages": [{"role": "assistant", "content": [block]}]}
    scan = walk_body(anthropic.MESSAGES.structure, body)
    assert "4111111111111111" in scan.texts
    assert "3" in scan.texts
    rewrite(scan, {"4111111111111111": "<CREDIT_CARD_1>"})
    assert block["input"] == {"card": "<CREDIT_CARD_1>", "count": 3}


def test_json_in_a_string_is_walked_and_reserialised_only_when_changed() -> None:
    arguments = '{"to":  "ann@example.org",\n "note": "say \\"hi\\" \\u00e9"}'
    untouched = '{"x":   "plain"}'
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    other = {"id": "c2", "type": "function", "function": {"name": "g", "arguments": untouched}}
    body = chat(messages=[{"role": "assistant", "content": None, "tool_calls": [call, other]}])
    scan = walk_body(openai.CHAT.structure, body)
    assert "say \"hi\" é" in scan.texts  # the decoded value, escapes and all
    rewrite(scan, {"ann@example.org": "<EMAIL_1>"})
    assert json.loads(call["function"]["arguments"]) == {"to": "<EMAIL_1>",
                                                         "note": 'say "hi" é'}
    assert other["function"]["arguments"] == untouched  # byte for byte


def test_arguments_that_are_not_json_are_text() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"to": "a'}}
    body = chat(messages=[{"role": "assistant", "tool_calls": [call]}])
    assert walk_body(openai.CHAT.structure, body).texts == ['{"to": "a']


def test_attachments_are_listed_not_scanned() -> None:
    parts = [{"type": "text", "text": "look"},
             {"type": "image_url", "image_url": {"url": "https://example.org/a.png"}},
             {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}},
             {"type": "file", "file": {"file_data": "JVBERi0", "filename": "ann-smith.pdf"}}]
    scan = walk_body(openai.CHAT.structure, chat(messages=[{"role": "user", "content": parts}]))
    assert scan.texts == ["look", "ann-smith.pdf"]
    assert [(a.path, a.kind) for a in scan.attachments] == [
        ("messages[0].content[1].image_url", "image"),
        ("messages[0].content[2].input_audio", "audio"),
        ("messages[0].content[3].file.file_data", "file")]


def test_data_urls_anywhere_are_attachments() -> None:
    scan = walk_body(openai.CHAT.structure,
                     chat(extra={"picture": "data:image/png;base64,iVBORw0KGgo="}))
    assert [a.kind for a in scan.attachments] == ["data_url"]
    assert "data:image/png;base64,iVBORw0KGgo=" not in scan.texts


def test_token_ids_are_attachments() -> None:
    body = {"model": "m", "prompt": [[1, 2, 3], "text"]}
    scan = walk_body(openai.COMPLETIONS.structure, body)
    assert scan.texts == ["text"]
    assert [(a.path, a.kind) for a in scan.attachments] == [("prompt[0]", "tokens")]


def test_unknown_fields_and_variants_are_listed() -> None:
    parts = [{"type": "video_frame", "frame": "f"}]
    body = chat(vendor_flag=True, messages=[{"role": "user", "content": parts}])
    scan = walk_body(openai.CHAT.structure, body)
    assert scan.unknown == ["messages[0].content[0].type", "vendor_flag"]
    assert "f" in scan.texts
    assert "frame" in scan.texts


def test_identifiers_that_look_like_personal_data_are_refused() -> None:
    body = chat(messages=[{"role": "tool", "tool_call_id": "4111111111111111", "content": "r"}])
    with pytest.raises(InvalidRequest, match="sensitive data") as caught:
        walk_body(openai.CHAT.structure, body)
    assert caught.value.param == "messages[0].tool_call_id"
    assert "4111" not in caught.value.message


def test_too_deep_is_refused_with_a_clear_error() -> None:
    deep: Any = "x"
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(InvalidRequest, match="nests deeper") as caught:
        walk_body(openai.CHAT.structure, chat(extra=deep))
    assert caught.value.code == "too_deep"


# The type confusions the coverage issue found forwarded unscanned: each is a 400 naming the
# field now. (The same through the running gateway: tests/integration/test_type_confusion.py.)
CONFUSIONS = [
    (openai.CHAT, chat(messages=[{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]),
     "messages[0].tool_calls[0].function.arguments"),
    (openai.CHAT, chat(messages=[{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": "f(1)"}]}]),
     "messages[0].tool_calls[0].function"),
    (openai.CHAT, chat(messages=[{"role": "user", "content": {"text": "hi"}}]),
     "messages[0].content"),
    (openai.RESPONSES, {"model": "m", "input": "x", "instructions": ["be nice"]},
     "instructions"),
    (anthropic.MESSAGES, {"model": "m", "max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f",
                                           "input": "{}"}]}]},
     "messages[0].content[0].input"),
    (anthropic.MESSAGES, {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                      "content": {"text": "x"}}]}]},
     "messages[0].content[0].content"),
]


@pytest.mark.parametrize(("endpoint", "body", "param"), CONFUSIONS)
def test_wrong_types_are_refused_naming_the_field(endpoint: Any, body: dict[str, Any],
                                                  param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        walk_body(endpoint.structure, body)
    assert caught.value.param == param
    assert param in caught.value.message


def test_json_with_duplicate_keys_is_forwarded_as_scanned() -> None:
    """A parser keeps the last of two equal keys; the model reads the text, both of them."""
    smuggled = '{"to": "ann@example.org", "to": "nobody"}'
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": smuggled}}
    body = chat(messages=[{"role": "assistant", "tool_calls": [call]}])
    scan = walk_body(openai.CHAT.structure, body)
    assert "ann@example.org" not in scan.texts  # the parse kept only the last
    rewrite(scan, {})
    assert call["function"]["arguments"] == '{"to":"nobody"}'  # what was scanned, nothing more


def test_free_form_values_are_read_after_their_key() -> None:
    block = {"type": "tool_use", "id": "t", "name": "f",
             "input": {"password": "hunter2hunter2", "n": 5, "nested": ["x"]}}
    body = {"model": "m", "max_tokens": 5,
            "messages": [{"role": "assistant", "content": [block]}]}
    scan = walk_body(anthropic.MESSAGES.structure, body)
    read, offsets = scan.for_detection(scan.texts)
    assert "password: hunter2hunter2" in read
    assert "n: 5" in read
    assert "x" in read  # an array item has no key of its own
    assert all(text[offset:] == own for text, offset, own
               in zip(read, offsets, scan.texts, strict=True))


def test_too_many_values_are_refused() -> None:
    body = chat(extra=list(range(MAX_VALUES + 1)))
    with pytest.raises(InvalidRequest, match="separate values") as caught:
        walk_body(openai.CHAT.structure, body)
    assert caught.value.code == "too_many_values"
