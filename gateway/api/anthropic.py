"""Anthropic Messages wire format: `/v1/messages` and `/v1/messages/count_tokens`, each one
`Endpoint`: the declared structure of the body, the stream restorer, terminal and error
events, and Anthropic's error shape. What is not declared structural is data and is scanned.
"""

from __future__ import annotations

from typing import Any

from gateway.api.endpoint import Endpoint
from gateway.api.replies import EventRestore, event_bytes
from gateway.api.sse import SSEEvent
from gateway.api.structure import (
    BOOLEAN,
    FREE,
    ID,
    INTEGER,
    MODEL,
    NAME_TOKEN,
    NUMBER,
    OPAQUE_TOKEN,
    TAG,
    TEXT,
    Arr,
    Attach,
    Enum,
    Lazy,
    Node,
    Obj,
    OneOf,
    Tagged,
)

CACHE_CONTROL = Obj({"type": Enum("ephemeral"), "ttl": Enum("5m", "1h")})
CITATIONS_CONFIG = Obj({"enabled": BOOLEAN})
# Citations a client sends back with an assistant turn: the cited text is the document's own.
CITATION = Tagged({
    kind: Obj({"type": TAG, "cited_text": TEXT, "document_index": INTEGER,
               "document_title": TEXT, "start_char_index": INTEGER, "end_char_index": INTEGER,
               "start_page_number": INTEGER, "end_page_number": INTEGER,
               "start_block_index": INTEGER, "end_block_index": INTEGER,
               "search_result_index": INTEGER, "source": TEXT, "title": TEXT, "url": TEXT,
               "encrypted_index": OPAQUE_TOKEN, "file_id": ID})
    for kind in ("char_location", "page_location", "content_block_location",
                 "search_result_location", "web_search_result_location")
})
TEXT_BLOCK = Obj({"type": TAG, "text": TEXT, "citations": Arr(CITATION),
                  "cache_control": CACHE_CONTROL})
IMAGE_BLOCK = Obj({"type": TAG, "source": Attach("image"), "cache_control": CACHE_CONTROL})
DOCUMENT_SOURCE = Tagged({
    "text": Obj({"type": TAG, "media_type": Enum("text/plain"), "data": TEXT}),
    "content": Obj({"type": TAG, "content": OneOf(
        "a string or an array of content blocks", string=TEXT,
        array=Arr(Tagged({"text": TEXT_BLOCK, "image": IMAGE_BLOCK})))}),
    "base64": Attach("document"),
    "url": Attach("document"),
    "file": Attach("document"),
})
DOCUMENT_BLOCK = Obj({"type": TAG, "source": DOCUMENT_SOURCE, "title": TEXT, "context": TEXT,
                      "citations": CITATIONS_CONFIG, "cache_control": CACHE_CONTROL})
SEARCH_RESULT_BLOCK = Obj({"type": TAG, "source": TEXT, "title": TEXT,
                           "content": Arr(Tagged({"text": TEXT_BLOCK})),
                           "citations": CITATIONS_CONFIG, "cache_control": CACHE_CONTROL})
WEB_SEARCH_RESULT = Tagged({
    "web_search_result": Obj({"type": TAG, "url": TEXT, "title": TEXT, "page_age": TEXT,
                              "encrypted_content": OPAQUE_TOKEN}),
    "web_search_tool_result_error": Obj({"type": TAG, "error_code": Enum(
        "invalid_tool_input", "unavailable", "max_uses_exceeded", "too_many_requests",
        "query_too_long", "request_too_large")}),
})
_CALLER = FREE  # who called a tool (direct, or a code-execution tool): ids and names
TOOL_RESULT_BLOCK = Obj({
    "type": TAG, "tool_use_id": ID, "is_error": BOOLEAN, "cache_control": CACHE_CONTROL,
    "content": OneOf("a string or an array of content blocks", string=TEXT, array=Arr(Tagged({
        "text": TEXT_BLOCK, "image": IMAGE_BLOCK, "document": DOCUMENT_BLOCK,
        "search_result": SEARCH_RESULT_BLOCK}))),
})
TOOL_INPUT = OneOf("an object", obj=FREE)
CONTENT_BLOCK: Node = Tagged({
    "text": TEXT_BLOCK,
    "image": IMAGE_BLOCK,
    "document": DOCUMENT_BLOCK,
    "search_result": SEARCH_RESULT_BLOCK,
    "tool_use": Obj({"type": TAG, "id": ID, "name": NAME_TOKEN, "input": TOOL_INPUT,
                     "caller": _CALLER, "cache_control": CACHE_CONTROL}),
    "server_tool_use": Obj({"type": TAG, "id": ID, "name": NAME_TOKEN, "input": TOOL_INPUT,
                            "caller": _CALLER, "cache_control": CACHE_CONTROL}),
    "mcp_tool_use": Obj({"type": TAG, "id": ID, "name": NAME_TOKEN, "server_name": NAME_TOKEN,
                         "input": TOOL_INPUT, "cache_control": CACHE_CONTROL}),
    "tool_result": TOOL_RESULT_BLOCK,
    "mcp_tool_result": TOOL_RESULT_BLOCK,
    "web_search_tool_result": Obj({"type": TAG, "tool_use_id": ID, "caller": _CALLER,
                                   "cache_control": CACHE_CONTROL,
                                   "content": OneOf("an array or an object",
                                                    array=Arr(WEB_SEARCH_RESULT),
                                                    obj=WEB_SEARCH_RESULT)}),
    "thinking": Obj({"type": TAG, "thinking": TEXT, "signature": OPAQUE_TOKEN}),
    "redacted_thinking": Obj({"type": TAG, "data": OPAQUE_TOKEN}),
    "container_upload": Obj({"type": TAG, "file_id": Attach("file"),
                             "cache_control": CACHE_CONTROL}),
    "compaction": Obj({"type": TAG, "content": TEXT, "cache_control": CACHE_CONTROL}),
})
CONTENT = OneOf("a string or an array of content blocks", string=TEXT,
                array=Arr(Lazy(lambda: CONTENT_BLOCK)))
# (`system` messages, with `clear_at` and a per-turn `output_config`, are an Anthropic beta.)
MESSAGE = Obj({"role": Enum("user", "assistant", "system", closed=True), "content": CONTENT,
               "clear_at": Enum("next_user_message", "never")}, required=("role",))
TOOL = Tagged({
    "custom": Obj({"type": TAG, "name": NAME_TOKEN, "description": TEXT, "input_schema": FREE,
                   "input_examples": Arr(FREE), "cache_control": CACHE_CONTROL,
                   "strict": BOOLEAN, "defer_loading": BOOLEAN,
                   "eager_input_streaming": BOOLEAN, "allowed_callers": Arr(Enum(
                       "direct", "code_execution_20250825", "code_execution_20260120"))}),
}, default="custom")
TOOL_CHOICE = Tagged({
    "auto": Obj({"type": TAG, "disable_parallel_tool_use": BOOLEAN}),
    "any": Obj({"type": TAG, "disable_parallel_tool_use": BOOLEAN}),
    "tool": Obj({"type": TAG, "name": NAME_TOKEN, "disable_parallel_tool_use": BOOLEAN}),
    "none": Obj({"type": TAG}),
})
THINKING = Tagged({
    "enabled": Obj({"type": TAG, "budget_tokens": INTEGER,
                    "display": Enum("summarized", "omitted")}),
    "adaptive": Obj({"type": TAG, "display": Enum("summarized", "omitted")}),
    "disabled": Obj({"type": TAG}),
    "between_tools": Obj({"type": TAG}),
})
MCP_SERVER = Obj({"type": Enum("url"), "url": TEXT, "name": NAME_TOKEN,
                  "authorization_token": TEXT, "tool_configuration": FREE})
OUTPUT_FORMAT = Tagged({"json_schema": Obj({"type": TAG, "schema": FREE})})
_COMMON: dict[str, Node] = {
    "model": MODEL,
    "system": OneOf("a string or an array of text blocks", string=TEXT,
                    array=Arr(Tagged({"text": TEXT_BLOCK}))),
    "messages": Arr(MESSAGE, min_items=1),
    "tools": Arr(TOOL), "tool_choice": TOOL_CHOICE, "thinking": THINKING,
    "mcp_servers": Arr(MCP_SERVER),
    "output_config": Obj({"effort": Enum("low", "medium", "high", "xhigh", "max"),
                          "format": OUTPUT_FORMAT}),
    "output_format": OUTPUT_FORMAT,
    "cache_control": CACHE_CONTROL,
    "context_management": FREE,
    "speed": Enum("standard", "fast"),
}
MESSAGES_BODY = Obj({
    **_COMMON,
    "max_tokens": INTEGER, "stream": BOOLEAN, "stop_sequences": Arr(TEXT),
    "temperature": NUMBER, "top_p": NUMBER, "top_k": INTEGER,
    "metadata": Obj({"user_id": TEXT}),
    "service_tier": Enum("auto", "standard_only"),
}, required=("model", "max_tokens", "messages"))
COUNT_TOKENS_BODY = Obj(_COMMON, required=("model", "messages"))

DELTA_TYPES = {"text": "text_delta", "partial_json": "input_json_delta",
               "thinking": "thinking_delta"}


class MessagesEvents(EventRestore):
    """Anthropic events: each content block's text, partial tool-input JSON and thinking are
    channels, flushed into a delta just before `content_block_stop`; citations (whole in one
    `citations_delta`) and every other event are restored whole."""

    def on_event(self, name: str | None, event: dict[str, Any]) -> list[bytes]:
        kind = event.get("type", name)
        index = event.get("index", 0)
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            for field in DELTA_TYPES:
                if isinstance(delta.get(field), str):
                    mode = "json" if field == "partial_json" else \
                        self.content_mode if field == "text" else "text"
                    delta[field] = self.feed(("b", index, field), delta[field], mode)
            for field in [f for f in delta if f not in DELTA_TYPES and f != "type"]:
                delta[field] = self.whole(delta[field])
            return [event_bytes(name, event)]
        out = []
        if kind == "content_block_stop":
            for key, text in self.flush(("b", index)).items():
                out.append(event_bytes("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": DELTA_TYPES[key[2]], key[2]: text}}))
        out.append(event_bytes(name, self.whole(event)))
        return out


def _json_reply(body: dict[str, Any]) -> bool:
    config = body.get("output_config")
    formats = [body.get("output_format"), config.get("format") if isinstance(config, dict)
               else None]
    return any(isinstance(f, dict) and f.get("type") == "json_schema" for f in formats)


def _is_terminal(event: SSEEvent) -> bool:
    return event.event in ("message_stop", "error")


def _stream_error(message: str, request_id: str) -> bytes:
    return event_bytes("error", {"type": "error", "error": {
        "type": "api_error", "message": message, "request_id": request_id}})


def error_body(envelope: dict[str, Any]) -> dict[str, Any]:
    """Anthropic SDKs expect `{"type": "error", "error": {...}}`; the OpenAI fields stay inside."""
    return {"type": "error", **envelope}


MESSAGES = Endpoint("/v1/messages", "anthropic", "messages", MESSAGES_BODY, MessagesEvents,
                    _is_terminal, _stream_error, error_body, json_reply=_json_reply)
COUNT_TOKENS = Endpoint("/v1/messages/count_tokens", "anthropic", "count_tokens",
                        COUNT_TOKENS_BODY, None, error_body=error_body, restores_reply=False)
