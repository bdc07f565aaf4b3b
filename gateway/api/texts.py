"""Every piece of text a request carries, per wire format, in conversation order, as slots that
can be read and rewritten in place: message contents (strings and text parts), system prompts,
tool-call arguments, tool results, completion prompts, Responses input and instructions,
Anthropic content blocks (text, tool_use input, tool_result), embedding inputs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.api.request import ApiRequest


@dataclass(frozen=True, slots=True)
class TextSlot:
    container: dict[str, Any] | list[Any]
    key: str | int

    @property
    def text(self) -> str:
        value = self.container[self.key]  # type: ignore[index]
        if not isinstance(value, str):
            raise TypeError("text slot no longer holds a string")
        return value

    def set(self, value: str) -> None:
        self.container[self.key] = value  # type: ignore[index]


def _slot(container: dict[str, Any] | list[Any], key: str | int) -> Iterator[TextSlot]:
    try:
        value = container[key]  # type: ignore[index]
    except (KeyError, IndexError):
        return
    if isinstance(value, str) and value:
        yield TextSlot(container, key)


def _strings(value: Any) -> Iterator[TextSlot]:
    """Every string leaf of a JSON value (tool inputs, nested tool results)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(item, str):
            yield from _slot(value, key)
        else:
            yield from _strings(item)


def _parts(content: Any, owner: dict[str, Any], key: str) -> Iterator[TextSlot]:
    """A content field: a string, or a list of parts whose text-bearing fields are scanned."""
    if isinstance(content, str):
        yield from _slot(owner, key)
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            for field in ("text", "input_text", "output_text", "refusal", "thinking"):
                yield from _slot(part, field)
            if part.get("type") == "tool_use":
                yield from _strings(part.get("input"))
            if part.get("type") == "tool_result":
                yield from _parts(part.get("content"), part, "content")
            if part.get("type") in ("function_call", "function_call_output"):
                yield from _slot(part, "arguments")
                yield from _slot(part, "output")


def chat(body: dict[str, Any]) -> Iterator[TextSlot]:
    for message in body["messages"]:
        yield from _parts(message.get("content"), message, "content")
        calls = [c.get("function") for c in message.get("tool_calls") or []]
        for function in [*calls, message.get("function_call")]:  # function_call: legacy form
            if isinstance(function, dict):
                yield from _slot(function, "arguments")


def _string_or_strings(body: dict[str, Any], key: str) -> Iterator[TextSlot]:
    """A field holding a string or a list of strings (token arrays carry no text)."""
    value = body[key]
    if isinstance(value, str):
        yield from _slot(body, key)
    else:
        for i, item in enumerate(value):
            if isinstance(item, str):
                yield from _slot(value, i)


def completions(body: dict[str, Any]) -> Iterator[TextSlot]:
    return _string_or_strings(body, "prompt")


def embeddings(body: dict[str, Any]) -> Iterator[TextSlot]:
    return _string_or_strings(body, "input")


def responses(body: dict[str, Any]) -> Iterator[TextSlot]:
    yield from _slot(body, "instructions")
    if isinstance(body["input"], str):
        yield from _slot(body, "input")
        return
    for item in body["input"]:
        yield from _parts(item.get("content"), item, "content")
        yield from _slot(item, "arguments")
        yield from _slot(item, "output")


def messages(body: dict[str, Any]) -> Iterator[TextSlot]:
    yield from _parts(body.get("system"), body, "system")
    for message in body["messages"]:
        yield from _parts(message.get("content"), message, "content")


WALKERS = {"chat_completions": chat, "completions": completions, "embeddings": embeddings,
           "responses": responses, "messages": messages}


def text_slots(request: ApiRequest) -> list[TextSlot]:
    return list(WALKERS[request.endpoint.name](request.body))
