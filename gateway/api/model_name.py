"""The client's model name put back into replies from a backend that knows the model by
another name (`upstream_models`): the client's SDK sees the model it asked for, not the
backend's name for it (an Azure deployment, a dated version, a model server's path).

Replies name their model in a body's top-level `model` (every endpoint that has one), and in
streams in each event's `model` (chat and completion chunks), `response.model` (Responses
events) or `message.model` (Anthropic's `message_start`). Whatever the backend wrote there
is replaced; a reply that names no model is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.api.replies import event_payload, restore_body, restore_value
from gateway.api.sse import SSEEvent
from gateway.privacy.vault import Vault

NESTED = ("response", "message")


def rename(doc: dict[str, Any], model: str) -> bool:
    """Put `model` where `doc` names its model; whether anything changed."""
    changed = False
    for holder in (doc, *(doc.get(key) for key in NESTED)):
        if isinstance(holder, dict) and isinstance(holder.get("model"), str) \
                and holder["model"] != model:
            holder["model"] = model
            changed = True
    return changed


def renamed_body(raw: bytes, model: str, vault: Vault | None = None) -> bytes:
    """A whole reply with the client's model name, restored with `vault` in the same pass."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return restore_body(raw, vault) if vault is not None else raw
    if vault is not None and len(vault):
        body = restore_value(body, vault)
    if isinstance(body, dict):
        rename(body, model)
    return orjson.dumps(body)


def renaming(rewrite: Callable[[SSEEvent], list[bytes]], model: str
             ) -> Callable[[SSEEvent], list[bytes]]:
    """`rewrite` (the stream's restore, or its checks) of each event with the client's model
    name in it."""
    def renamed(event: SSEEvent) -> list[bytes]:
        payload = event_payload(event)
        if isinstance(payload, dict) and rename(payload, model):
            event = with_data(event, payload)
        return rewrite(event)
    return renamed


def with_data(event: SSEEvent, payload: dict[str, Any]) -> SSEEvent:
    """The event with `payload` as its data, its other fields (`event:`, `id:`) kept."""
    others = [line for line in event.raw.split(b"\n") if line and not line.startswith(b"data")]
    return SSEEvent(b"\n".join([*others, b"data: " + orjson.dumps(payload)]) + b"\n")
