"""OpenAI wire format: request validation, stream terminal events and error events."""

from __future__ import annotations

import json
from typing import Any

from gateway.api.fields import (
    check_content,
    require_list,
    require_object,
    require_str,
    wrong_type,
)
from gateway.api.request import Endpoint
from gateway.api.sse import SSEEvent
from gateway.errors import InvalidRequest

CHAT_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def validate_chat(body: dict[str, Any]) -> None:
    for i, message in enumerate(require_list(body, "messages")):
        # The common, valid message is checked without building any field name; names
        # (messages[3].role) are spelled out only for the error.
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in CHAT_ROLES:
            _bad_message(i, message)
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            check_content(content, f"messages[{i}].content")
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            if not isinstance(tool_calls, list):
                raise wrong_type(f"messages[{i}].tool_calls", "an array", tool_calls)
            for j, call in enumerate(tool_calls):
                require_object(call, f"messages[{i}].tool_calls[{j}]")


def _bad_message(i: int, message: Any) -> None:
    param = f"messages[{i}]"
    require_object(message, param)
    require_str(message, "role", prefix=param + ".")
    raise InvalidRequest(f"'{param}.role' must be one of {sorted(CHAT_ROLES)}.",
                         param=f"{param}.role")


def validate_completions(body: dict[str, Any]) -> None:
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("'prompt' is required.", param="prompt")
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and all((isinstance(p, str | int) and not isinstance(p, bool))
                                        or isinstance(p, list) for p in prompt):
        return
    raise wrong_type("prompt", "a string, an array of strings or an array of tokens", prompt)


def validate_embeddings(body: dict[str, Any]) -> None:
    value = body.get("input")
    if value is None:
        raise InvalidRequest("'input' is required.", param="input")
    if not isinstance(value, str | list):
        raise wrong_type("input", "a string or an array", value)


def validate_responses(body: dict[str, Any]) -> None:
    value = body.get("input")
    if value is None:
        raise InvalidRequest("'input' is required.", param="input")
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise wrong_type("input", "a string or an array of input items", value)
    for i, item in enumerate(value):
        require_object(item, f"input[{i}]")


CHAT = Endpoint("/v1/chat/completions", "openai", "chat_completions", validate_chat)
COMPLETIONS = Endpoint("/v1/completions", "openai", "completions", validate_completions)
EMBEDDINGS = Endpoint("/v1/embeddings", "openai", "embeddings", validate_embeddings,
                      streams=False)
RESPONSES = Endpoint("/v1/responses", "openai", "responses", validate_responses)

RESPONSES_TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


def is_terminal(endpoint: Endpoint, event: SSEEvent) -> bool:
    """Whether `event` legitimately ends the stream (else an early EOF means it was cut)."""
    if endpoint is RESPONSES:
        return (event.event or _json_type(event.data)) in RESPONSES_TERMINAL
    return event.data.strip() == "[DONE]"


def _json_type(data: str) -> str | None:
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return parsed.get("type") if isinstance(parsed, dict) else None


def stream_error_event(endpoint: Endpoint, message: str, request_id: str) -> bytes:
    """A final event telling an SDK the stream failed; OpenAI SDKs raise on an `error` payload."""
    error = {"message": message, "type": "upstream_error", "code": "stream_interrupted",
             "param": None, "request_id": request_id}
    if endpoint is RESPONSES:
        payload = json.dumps({"type": "error", **error})
        return f"event: error\ndata: {payload}\n\n".encode()
    return f"data: {json.dumps({'error': error})}\n\n".encode()
