"""Put original values back into replies: whole JSON bodies, and SSE streams event by event.

Streams are restored per channel (a choice's content, a tool call's arguments, a content block)
with a `StreamRestorer` each, so interleaved deltas never mix; a channel's held-back tail is
flushed into the event that closes it (finish_reason, content_block_stop, *.done). Text that is
JSON source (tool-call arguments, `partial_json`) gets JSON-escaped values. Events we cannot
parse end the stream with an error (fail closed) rather than pass through unrestored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.api.request import Endpoint
from gateway.api.sse import SSEEvent
from gateway.privacy.restorer import StreamRestorer, json_escape
from gateway.privacy.vault import Vault

JSON_SOURCE_KEYS = frozenset({"arguments", "partial_json"})


class StreamFormatError(Exception):
    """An upstream event this gateway cannot restore safely."""


def restore_value(value: Any, vault: Vault, key: str | None = None) -> Any:
    """Every string in a JSON value, restored whole."""
    if isinstance(value, str):
        return vault.restore(value, json_escape if key in JSON_SOURCE_KEYS else None)
    if isinstance(value, dict):
        return {k: restore_value(v, vault, k) for k, v in value.items()}
    if isinstance(value, list):
        return [restore_value(v, vault, key) for v in value]
    return value


def restore_body(raw: bytes, vault: Vault) -> bytes:
    if not len(vault) or b"<" not in raw:
        return raw
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return vault.restore(raw.decode("utf-8", "replace")).encode()
    return orjson.dumps(restore_value(body, vault))


def _event(name: str | None, payload: Any) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


class StreamRestore:
    def __init__(self, endpoint: Endpoint, vault: Vault) -> None:
        self._vault = vault
        self._channels: dict[tuple[Any, ...], StreamRestorer] = {}
        self._last: dict[str, Any] = {}
        self._handle: Callable[[str | None, dict[str, Any]], list[bytes]] = {
            "chat_completions": self._chat, "completions": self._completions,
            "responses": self._responses, "messages": self._anthropic,
        }[endpoint.name]

    def rewrite(self, event: SSEEvent) -> list[bytes]:
        data = event.data
        if not data.strip():
            return [event.encode()]
        if data.strip() == "[DONE]":
            return [*self._flush_all(), event.encode()]
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise StreamFormatError("upstream sent an event that is not JSON") from None
        if not isinstance(payload, dict):
            raise StreamFormatError("upstream sent an event that is not a JSON object")
        return self._handle(event.event, payload)

    def _channel(self, key: tuple[Any, ...], json_source: bool = False) -> StreamRestorer:
        restorer = self._channels.get(key)
        if restorer is None:
            restorer = StreamRestorer(self._vault, json_escape if json_source else None)
            self._channels[key] = restorer
        return restorer

    def _flush(self, prefix: tuple[Any, ...]) -> dict[tuple[Any, ...], str]:
        out = {}
        for key in [k for k in self._channels if k[:len(prefix)] == prefix]:
            text = self._channels.pop(key).flush()
            if text:
                out[key] = text
        return out

    # --- OpenAI chat completions ---------------------------------------------------------

    def _chat(self, name: str | None, chunk: dict[str, Any]) -> list[bytes]:
        self._last = chunk
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                delta["content"] = self._channel(("c", index)).feed(delta["content"])
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                if isinstance(function.get("arguments"), str):
                    restorer = self._channel(("t", index, call.get("index", 0)), True)
                    function["arguments"] = restorer.feed(function["arguments"])
            if choice.get("finish_reason") is not None:
                self._chat_flush_into(index, delta)
                choice["delta"] = delta
        return [_event(name, chunk)]

    def _chat_flush_into(self, index: int, delta: dict[str, Any]) -> None:
        for text in self._flush(("c", index)).values():
            delta["content"] = text + (delta.get("content") or "")
        for key, text in self._flush(("t", index)).items():
            calls = delta.setdefault("tool_calls", [])
            call = next((c for c in calls if c.get("index", 0) == key[2]), None)
            if call is None:
                call = {"index": key[2], "function": {"arguments": ""}}
                calls.append(call)
            function = call.setdefault("function", {})
            function["arguments"] = text + (function.get("arguments") or "")

    def _flush_all(self) -> list[bytes]:
        """Anything still held when the stream ends (an upstream that sent no finish_reason)."""
        if not self._channels:
            return []
        if "choices" in self._last:
            shell = {k: v for k, v in self._last.items() if k not in ("choices", "usage")}
            choices = []
            for index in sorted({k[1] for k in self._channels}):
                delta: dict[str, Any] = {}
                self._chat_flush_into(index, delta)
                choices.append({"index": index, "delta": delta, "finish_reason": None})
            return [_event(None, {**shell, "choices": choices})]
        self._channels.clear()
        return []

    # --- OpenAI completions -----------------------------------------------------------------

    def _completions(self, name: str | None, chunk: dict[str, Any]) -> list[bytes]:
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            if isinstance(choice.get("text"), str):
                choice["text"] = self._channel(("x", index)).feed(choice["text"])
            if choice.get("finish_reason") is not None:
                held = self._flush(("x", index))
                choice["text"] = "".join(held.values()) + (choice.get("text") or "")
        return [_event(name, chunk)]

    # --- OpenAI Responses -----------------------------------------------------------------

    def _responses(self, name: str | None, event: dict[str, Any]) -> list[bytes]:
        kind = event.get("type", name)
        where = (event.get("output_index", 0), event.get("content_index", 0))
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            event["delta"] = self._channel(("o", *where)).feed(event["delta"])
            return [_event(name, event)]
        if kind == "response.function_call_arguments.delta" and isinstance(event.get("delta"),
                                                                            str):
            event["delta"] = self._channel(("f", *where), True).feed(event["delta"])
            return [_event(name, event)]
        out = []
        if kind in ("response.output_text.done", "response.function_call_arguments.done"):
            delta_kind = kind.replace(".done", ".delta")
            for text in self._flush(("o" if "text" in kind else "f", *where)).values():
                fields = {k: event[k] for k in ("item_id", "output_index", "content_index",
                                                "sequence_number") if k in event}
                out.append(_event(delta_kind, {"type": delta_kind, **fields, "delta": text}))
        out.append(_event(name, restore_value(event, self._vault)))
        return out

    # --- Anthropic Messages -----------------------------------------------------------------

    def _anthropic(self, name: str | None, event: dict[str, Any]) -> list[bytes]:
        kind = event.get("type", name)
        index = event.get("index", 0)
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            for field in ("text", "partial_json", "thinking"):
                if isinstance(delta.get(field), str):
                    restorer = self._channel(("b", index, field), field == "partial_json")
                    delta[field] = restorer.feed(delta[field])
            return [_event(name, event)]
        out = []
        if kind == "content_block_stop":
            for key, text in self._flush(("b", index)).items():
                delta_type = {"text": "text_delta", "partial_json": "input_json_delta",
                              "thinking": "thinking_delta"}[key[2]]
                out.append(_event("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": delta_type, key[2]: text}}))
        out.append(_event(name, restore_value(event, self._vault)))
        return out
