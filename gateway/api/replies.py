"""Put original values back into replies: whole JSON bodies, and SSE streams event by event.

Restore works on decoded JSON values, never on the raw bytes, so an upstream that escapes `<`
as `\\u003c` (Go's encoder does) is restored like any other. Where the text is JSON source, a
value goes in JSON-escaped, so a name with a quote cannot break it: tool-call arguments, and
content the model wrote as a JSON document (asked for with `response_format`, or simply
starting with `{` or `[`).

Streams are restored per channel (a choice's content, a tool call's arguments, a content
block) with a `StreamRestorer` each, so interleaved deltas never mix; a channel's held-back
tail is flushed into the event that closes it. Each endpoint's event shapes are handled by its
own `EventRestore` subclass in its wire-format module. Events we cannot parse end the stream
with an error (fail closed) rather than pass through unrestored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import orjson

from gateway.api.endpoint import Endpoint
from gateway.api.sse import SSEEvent
from gateway.errors import StreamFormatError
from gateway.privacy.restorer import StreamRestorer, json_escape
from gateway.privacy.vault import Vault

JSON_SOURCE_KEYS = frozenset({"arguments", "partial_json"})


def is_json_document(text: str) -> bool:
    stripped = text.lstrip()
    if stripped[:1] not in ("{", "["):
        return False
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def restore_text(text: str, vault: Vault, *, json_source: bool = False) -> str:
    if "<" not in text:
        return text
    escape = json_escape if json_source or is_json_document(text) else None
    return vault.restore(text, escape)


def restore_value(value: Any, vault: Vault, key: str | None = None) -> Any:
    """Every string in a JSON value (object keys included), restored whole."""
    if isinstance(value, str):
        return restore_text(value, vault, json_source=key in JSON_SOURCE_KEYS)
    if isinstance(value, dict):
        return {restore_text(k, vault): restore_value(v, vault, k) for k, v in value.items()}
    if isinstance(value, list):
        return [restore_value(v, vault, key) for v in value]
    return value


def restore_body(raw: bytes, vault: Vault) -> bytes:
    if not len(vault):
        return raw
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return vault.restore(raw.decode("utf-8", "replace")).encode()
    return orjson.dumps(restore_value(body, vault))


def event_bytes(name: str | None, payload: Any) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


class Channel:
    """One stream of text inside a stream of events. Its mode is `text`, `json` (JSON source:
    values go in escaped) or `auto` (JSON source if its first non-blank character opens a JSON
    document, decided when that character arrives; blanks cannot hold a placeholder)."""

    __slots__ = ("_mode", "_restorer", "_vault")

    def __init__(self, vault: Vault, mode: str) -> None:
        self._vault = vault
        self._mode = mode
        self._restorer: StreamRestorer | None = None
        if mode != "auto":
            self._restorer = StreamRestorer(vault, json_escape if mode == "json" else None)

    def feed(self, piece: str) -> str:
        if self._restorer is None:
            if not piece.strip():
                return piece
            json_source = piece.lstrip()[:1] in ("{", "[")
            self._restorer = StreamRestorer(self._vault, json_escape if json_source else None)
        return self._restorer.feed(piece)

    def flush(self) -> str:
        return self._restorer.flush() if self._restorer is not None else ""


class EventRestore(ABC):
    """The channels of one stream and the plumbing every wire format shares; subclasses map
    their events onto channels in `on_event`."""

    def __init__(self, vault: Vault, json_reply: bool = False) -> None:
        self.vault = vault
        self.content_mode = "json" if json_reply else "auto"
        self.channels: dict[tuple[Any, ...], Channel] = {}
        self.response_id: str | None = None  # the id a stateful API gave this reply

    @abstractmethod
    def on_event(self, name: str | None, payload: dict[str, Any]) -> list[bytes]:
        """The bytes to send for one upstream event (often more than one event: a flush)."""

    def on_done(self) -> list[bytes]:
        """Before `[DONE]`: anything still held (an upstream that sent no finish event)."""
        self.channels.clear()
        return []

    def feed(self, key: tuple[Any, ...], piece: str, mode: str = "text") -> str:
        channel = self.channels.get(key)
        if channel is None:
            channel = self.channels[key] = Channel(self.vault, mode)
        return channel.feed(piece)

    def flush(self, prefix: tuple[Any, ...]) -> dict[tuple[Any, ...], str]:
        out = {}
        for key in [k for k in self.channels if k[:len(prefix)] == prefix]:
            text = self.channels.pop(key).flush()
            if text:
                out[key] = text
        return out

    def whole(self, value: Any) -> Any:
        return restore_value(value, self.vault)


class StreamRestore:
    """Restore one SSE stream for `endpoint`, event by event."""

    def __init__(self, endpoint: Endpoint, vault: Vault, json_reply: bool = False) -> None:
        if endpoint.events is None:
            raise ValueError(f"{endpoint.path} does not stream")
        self.events: EventRestore = endpoint.events(vault, json_reply)

    @property
    def response_id(self) -> str | None:
        return self.events.response_id

    def rewrite(self, event: SSEEvent) -> list[bytes]:
        payload = event_payload(event)
        if payload is None:
            return [event.encode()]
        if isinstance(payload, str):  # [DONE]
            return [*self.events.on_done(), event.encode()]
        return self.events.on_event(event.event, payload)


SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":", b"data", b"event", b"id")


def fields_checked(event: SSEEvent) -> None:
    """Every line of an event is an SSE field or a comment: anything else (garbage, a NUL, a
    half-written line) is a broken stream, never relayed for a client to trip on."""
    for line in event.raw.split(b"\n"):
        if line and not line.startswith(SSE_FIELDS):
            raise StreamFormatError("upstream sent a line that is not an SSE field")


def event_payload(event: SSEEvent) -> dict[str, Any] | str | None:
    """An event's data: a JSON object, "[DONE]", or None when it has none; anything else (or
    a line that is no SSE field) is a `StreamFormatError`."""
    fields_checked(event)
    data = event.data.strip()
    if not data or data == "[DONE]":
        return data or None
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise StreamFormatError("upstream sent an event that is not JSON") from None
    if not isinstance(payload, dict):
        raise StreamFormatError("upstream sent an event that is not a JSON object")
    return payload


def checked(event: SSEEvent) -> list[bytes]:
    """Relay an event as it is, after the checks restoring makes anyway (a stream with nothing
    to restore must not pass on what a restored one would refuse)."""
    event_payload(event)
    return [event.encode()]
