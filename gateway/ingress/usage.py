"""Tokens a reply used, as the upstream counted them (its `usage`): for the audit record, the
token metrics, tokens-per-minute limits and budgets. A whole body's, or a stream's, seen
event by event as it is relayed.

OpenAI chat/completions/embeddings: `prompt_tokens` / `completion_tokens` / `total_tokens`
(in a stream, the usage chunk, sent only when asked with `stream_options.include_usage`: the
gateway asks for every stream, and a client that did not ask never sees the answer).
Responses: `input_tokens` / `output_tokens` / `total_tokens` (streamed: in the final
`response.completed`, or `.incomplete` / `.failed`). Anthropic: `input_tokens` (plus the cache
writes and reads it leaves out of that count) and `output_tokens` (streamed: input in
`message_start`, running totals in each `message_delta`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.api.replies import event_payload
from gateway.api.sse import SSEEvent

ANTHROPIC_CACHED_INPUT = ("cache_creation_input_tokens", "cache_read_input_tokens")


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    total_tokens: int

    def record(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "total_tokens": self.total_tokens}


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def _first(usage: dict[str, Any], *names: str) -> int | None:
    for name in names:
        found = _count(usage.get(name))
        if found is not None:
            return found
    return None


def read_usage(usage: object) -> Usage | None:
    """One `usage` object of any wire format; None when it counts nothing."""
    if not isinstance(usage, dict):
        return None
    prompt = _first(usage, "prompt_tokens")  # OpenAI's count includes cached input
    given = prompt if prompt is not None else _first(usage, "input_tokens")
    output = _first(usage, "completion_tokens", "output_tokens")
    total = _first(usage, "total_tokens")
    if given is None and output is None and total is None:
        return None
    cached = 0 if prompt is not None else \
        sum(_count(usage.get(name)) or 0 for name in ANTHROPIC_CACHED_INPUT)
    input_tokens, output_tokens = (given or 0) + cached, output or 0
    return Usage(input_tokens, output_tokens,
                 total if total is not None else input_tokens + output_tokens)


def usage_of(reply: Any) -> Usage | None:
    """A whole reply's usage (None when it says nothing of it)."""
    return read_usage(reply.get("usage")) if isinstance(reply, dict) else None


class UsageCounter:
    """The usage of one reply: read from its whole body, or observed as its stream's events
    pass. `hide`: the gateway asked for the usage chunk the client did not (OpenAI chat and
    completions): it is counted, then dropped, and `usage` taken out of every other chunk, so
    the client sees the stream it asked for."""

    def __init__(self, *, hide: bool = False) -> None:
        self._hide = hide
        self._usage: Usage | None = None  # OpenAI's and Responses' (the latest wins)
        self._input: int | None = None  # Anthropic's, in its separate events
        self._output: int | None = None

    @property
    def seen(self) -> Usage | None:
        if self._input is None and self._output is None:
            return self._usage
        given, output = self._input or 0, self._output or 0
        return Usage(given, output, given + output)

    def observe_reply(self, reply: Any) -> None:
        self._usage = usage_of(reply) or self._usage

    def observing(self, rewrite: Callable[[SSEEvent], list[bytes]]
                  ) -> Callable[[SSEEvent], list[bytes]]:
        def observed(event: SSEEvent) -> list[bytes]:
            if b"usage" not in event.raw:  # most events: left to `rewrite` to parse
                return rewrite(event)
            payload = event_payload(event)  # refuses what is not a stream's event
            if not isinstance(payload, dict):
                return rewrite(event)
            self._observe(payload)
            if self._hide and "usage" in payload:
                if payload.get("choices") == [] and payload["usage"] is not None:
                    return []  # the usage chunk only the gateway asked for
                del payload["usage"]
                event = _with_data(event, payload)
            return rewrite(event)
        return observed

    def _observe(self, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        response, message = payload.get("response"), payload.get("message")
        if kind == "message_start" and isinstance(message, dict):
            self._anthropic(message.get("usage"))
        elif kind == "message_delta":
            self._anthropic(payload.get("usage"))
        elif isinstance(response, dict):  # Responses' events carry the response so far
            self._usage = read_usage(response.get("usage")) or self._usage
        elif kind is None:  # OpenAI chunks
            self._usage = read_usage(payload.get("usage")) or self._usage

    def _anthropic(self, usage: object) -> None:
        """Counts are running totals: the highest seen of each is the reply's."""
        if not isinstance(usage, dict):
            return
        given = _first(usage, "input_tokens")
        if given is not None:
            given += sum(_count(usage.get(name)) or 0 for name in ANTHROPIC_CACHED_INPUT)
            self._input = max(self._input or 0, given)
        output = _first(usage, "output_tokens")
        if output is not None:
            self._output = max(self._output or 0, output)


def _with_data(event: SSEEvent, payload: dict[str, Any]) -> SSEEvent:
    """The event with `payload` as its data, its other fields (event name, id) kept."""
    kept = b"".join(line + b"\n" for line in event.raw.split(b"\n")
                    if line and not line.startswith(b"data"))
    return SSEEvent(kept + b"data: " + orjson.dumps(payload) + b"\n")
