"""Tokens a reply used, as the upstream counted them (its `usage`), for tokens-per-minute
limits: a whole body's, or a stream's, seen event by event as it is relayed.

OpenAI chat/completions/embeddings: `usage.total_tokens` (in a stream, the last chunk's, sent
when the client asked with `stream_options.include_usage`). Responses: `usage.total_tokens`
(streamed: in `response.completed`). Anthropic: `usage.input_tokens + usage.output_tokens`
(streamed: input in `message_start`, the running output count in `message_delta`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.api.replies import event_payload
from gateway.api.sse import SSEEvent


def _count(usage: object) -> int:
    if not isinstance(usage, dict):
        return 0
    total = usage.get("total_tokens")
    if isinstance(total, int) and total >= 0:
        return total
    parts = (usage.get("input_tokens"), usage.get("output_tokens"))
    return sum(p for p in parts if isinstance(p, int) and p >= 0)


def tokens_used(reply: Any) -> int:
    """A whole reply's tokens (0 when it says nothing of them)."""
    return _count(reply.get("usage")) if isinstance(reply, dict) else 0


class StreamUsage:
    """The tokens of one stream, observed as its events pass."""

    def __init__(self) -> None:
        self._counted = 0  # OpenAI's and Responses' totals
        self._input = 0  # Anthropic's
        self._output = 0

    @property
    def total(self) -> int:
        return self._counted + self._input + self._output

    def observing(self, rewrite: Callable[[SSEEvent], list[bytes]]
                  ) -> Callable[[SSEEvent], list[bytes]]:
        def observed(event: SSEEvent) -> list[bytes]:
            pieces = rewrite(event)  # first: it refuses what is not a stream's event
            payload = event_payload(event)
            if isinstance(payload, dict):
                self._observe(payload)
            return pieces
        return observed

    def _observe(self, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self._input = _count({"input_tokens": usage.get("input_tokens")})
        elif kind == "message_delta":
            usage = payload.get("usage")
            if isinstance(usage, dict):
                self._output = max(self._output, _count({"output_tokens":
                                                         usage.get("output_tokens")}))
        elif kind == "response.completed":
            response = payload.get("response")
            self._counted = _count(response.get("usage")) if isinstance(response, dict) else 0
        elif "usage" in payload:
            self._counted = max(self._counted, _count(payload.get("usage")))
