"""Anthropic Messages wire format: request validation, stream terminal and error events."""

from __future__ import annotations

import json
from typing import Any

from gateway.api.fields import (
    check_content,
    optional_int,
    require_list,
    require_object,
    require_str,
    wrong_type,
)
from gateway.api.request import Endpoint
from gateway.api.sse import SSEEvent
from gateway.errors import InvalidRequest

ROLES = {"user", "assistant"}


def validate_messages(body: dict[str, Any]) -> None:
    max_tokens = optional_int(body, "max_tokens", required=True)
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequest("'max_tokens' must be at least 1.", param="max_tokens")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise wrong_type("system", "a string or an array of text blocks", system)
    if isinstance(system, list):
        check_content(system, "system")
    for i, message in enumerate(require_list(body, "messages")):
        param = f"messages[{i}]"
        require_object(message, param)
        role = require_str(message, "role", prefix=param + ".")
        if role not in ROLES:
            raise InvalidRequest(f"'{param}.role' must be one of {sorted(ROLES)}.",
                                 param=f"{param}.role")
        check_content(message.get("content"), f"{param}.content")


MESSAGES = Endpoint("/v1/messages", "anthropic", "messages", validate_messages)


def is_terminal(event: SSEEvent) -> bool:
    return event.event in ("message_stop", "error")


def stream_error_event(message: str, request_id: str) -> bytes:
    payload = json.dumps({"type": "error", "error": {
        "type": "api_error", "message": message, "request_id": request_id}})
    return f"event: error\ndata: {payload}\n\n".encode()


def error_body(envelope: dict[str, Any]) -> dict[str, Any]:
    """Anthropic SDKs expect `{"type": "error", "error": {...}}`; the OpenAI fields stay inside."""
    return {"type": "error", **envelope}
