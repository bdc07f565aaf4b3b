"""Wire formats. The rest of the gateway never touches raw JSON shapes."""

from __future__ import annotations

from gateway.api import anthropic, openai
from gateway.api.request import ApiRequest, Endpoint
from gateway.api.sse import SSEEvent

ENDPOINTS: tuple[Endpoint, ...] = (
    openai.CHAT,
    openai.COMPLETIONS,
    openai.EMBEDDINGS,
    openai.RESPONSES,
    anthropic.MESSAGES,
)


def is_terminal(endpoint: Endpoint, event: SSEEvent) -> bool:
    if endpoint.wire == "anthropic":
        return anthropic.is_terminal(event)
    return openai.is_terminal(endpoint, event)


def stream_error_event(endpoint: Endpoint, message: str, request_id: str) -> bytes:
    if endpoint.wire == "anthropic":
        return anthropic.stream_error_event(message, request_id)
    return openai.stream_error_event(endpoint, message, request_id)


__all__ = ["ENDPOINTS", "ApiRequest", "Endpoint", "is_terminal", "stream_error_event"]
