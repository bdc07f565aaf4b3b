"""Wire formats. The rest of the gateway never touches raw JSON shapes: it reads `Endpoint`
objects (one per route, in the wire-format modules) and the `ApiRequest`s they parse."""

from __future__ import annotations

from gateway.api import anthropic, openai
from gateway.api.endpoint import ApiRequest, Endpoint
from gateway.api.sse import SSEEvent

ENDPOINTS: tuple[Endpoint, ...] = (
    openai.CHAT,
    openai.COMPLETIONS,
    openai.EMBEDDINGS,
    openai.RESPONSES,
    openai.CONVERSATIONS,
    openai.CONVERSATION_UPDATE,
    openai.CONVERSATION_ITEMS_ADD,
    anthropic.MESSAGES,
    anthropic.COUNT_TOKENS,
)

__all__ = ["ENDPOINTS", "ApiRequest", "Endpoint", "SSEEvent"]
