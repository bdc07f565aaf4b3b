"""OpenAI wire format: chat completions, completions, embeddings and Responses, each one
`Endpoint` with the declared structure of its body, its stream restorer, its terminal and
error events. Structure declares what is *structural* (left alone, checked); everything else
in a body, declared as text or not, is data and is scanned (see `gateway.api.structure`).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.api.endpoint import Endpoint
from gateway.api.replies import EventRestore, event_bytes
from gateway.api.sse import SSEEvent
from gateway.api.structure import (
    BOOLEAN,
    FREE,
    ID,
    INTEGER,
    JSON_TEXT,
    MODEL,
    NAME_TOKEN,
    NUMBER,
    OPAQUE_TOKEN,
    TAG,
    TEXT,
    Arr,
    Attach,
    Enum,
    Map,
    Node,
    Obj,
    OneOf,
    Tagged,
    Tokens,
)

STATUS = Enum("in_progress", "completed", "incomplete", "searching", "failed", "generating",
              "interpreting", "calling")
CACHE_BREAKPOINT = Obj({"mode": Enum("explicit"), "ttl": Enum("30m", "12h")})
METADATA = Map(TEXT)
STOP = OneOf("a string or an array of strings", string=TEXT, array=Arr(TEXT))
STREAM_OPTIONS = Obj({"include_usage": BOOLEAN, "include_obfuscation": BOOLEAN})
SERVICE_TIER = Enum("auto", "default", "flex", "scale", "priority", "fast")
REASONING_EFFORT = Enum("none", "minimal", "low", "medium", "high", "xhigh", "max")
VERBOSITY = Enum("low", "medium", "high")
LOGIT_BIAS = Map(NUMBER)
FUNCTION = Obj({"name": NAME_TOKEN, "description": TEXT, "parameters": FREE,
                "strict": BOOLEAN})


def _json_schema_format(**extra: Node) -> Obj:
    return Obj({"name": NAME_TOKEN, "description": TEXT, "schema": FREE, "strict": BOOLEAN,
                **extra})


# --- chat completions -----------------------------------------------------------------------

CHAT_PART = Tagged({
    "text": Obj({"type": TAG, "text": TEXT, "prompt_cache_breakpoint": CACHE_BREAKPOINT}),
    "refusal": Obj({"type": TAG, "refusal": TEXT}),
    "image_url": Obj({"type": TAG, "image_url": Attach("image"),
                      "prompt_cache_breakpoint": CACHE_BREAKPOINT}),
    "input_audio": Obj({"type": TAG, "input_audio": Attach("audio"),
                        "prompt_cache_breakpoint": CACHE_BREAKPOINT}),
    "file": Obj({"type": TAG, "file": Obj({"file_data": Attach("file"),
                                            "file_id": Attach("file"), "filename": TEXT}),
                 "prompt_cache_breakpoint": CACHE_BREAKPOINT}),
})
CHAT_CONTENT = OneOf("a string or an array of content parts", string=TEXT,
                     array=Arr(CHAT_PART))
TOOL_CALL = Tagged({
    "function": Obj({"id": ID, "type": TAG, "index": INTEGER,
                     "function": Obj({"name": NAME_TOKEN, "arguments": JSON_TEXT})}),
    "custom": Obj({"id": ID, "type": TAG, "index": INTEGER,
                   "custom": Obj({"name": NAME_TOKEN, "input": TEXT})}),
}, default="function")
# Fields of any message (clients such as LangChain send `tool_calls: []` on every role).
_MESSAGE = Obj({"role": TAG, "content": CHAT_CONTENT, "name": TEXT,
                "tool_calls": Arr(TOOL_CALL)})
CHAT_MESSAGE = Tagged({
    "system": _MESSAGE,
    "developer": _MESSAGE,
    "user": _MESSAGE,
    "assistant": _MESSAGE.extend({
        "refusal": TEXT, "audio": Obj({"id": ID}),
        "function_call": Obj({"name": NAME_TOKEN, "arguments": JSON_TEXT}),
        "reasoning_content": TEXT, "reasoning": TEXT}),
    "tool": _MESSAGE.extend({"tool_call_id": ID}),
    "function": _MESSAGE.extend({"name": NAME_TOKEN}),
}, key="role", closed=True)
CHAT_TOOL = Tagged({
    "function": Obj({"type": TAG, "function": FUNCTION}),
    "custom": Obj({"type": TAG, "custom": Obj({"name": NAME_TOKEN, "description": TEXT,
                                                "format": FREE})}),
}, default="function")
CHAT_TOOL_CHOICE = OneOf("a string or an object", string=Enum("none", "auto", "required"),
                         obj=Tagged({
                             "function": Obj({"type": TAG, "function": Obj({"name": NAME_TOKEN})}),
                             "custom": Obj({"type": TAG, "custom": Obj({"name": NAME_TOKEN})}),
                             "allowed_tools": Obj({"type": TAG, "allowed_tools": Obj({
                                 "mode": Enum("auto", "required"), "tools": Arr(FREE)})}),
                         }))
CHAT_RESPONSE_FORMAT = Tagged({
    "text": Obj({"type": TAG}),
    "json_object": Obj({"type": TAG}),
    "json_schema": Obj({"type": TAG, "json_schema": _json_schema_format()}),
})
_SAMPLING: dict[str, Node] = {
    "model": MODEL, "stream": BOOLEAN, "stream_options": STREAM_OPTIONS,
    "temperature": NUMBER, "top_p": NUMBER, "frequency_penalty": NUMBER,
    "presence_penalty": NUMBER, "n": INTEGER, "seed": INTEGER, "max_tokens": INTEGER,
    "logit_bias": LOGIT_BIAS, "stop": STOP, "user": TEXT,
}
CHAT_BODY = Obj({
    "model": MODEL,
    "messages": Arr(CHAT_MESSAGE, min_items=1),
    **_SAMPLING,
    "max_completion_tokens": INTEGER, "logprobs": BOOLEAN, "top_logprobs": INTEGER,
    "parallel_tool_calls": BOOLEAN, "store": BOOLEAN, "metadata": METADATA,
    "tools": Arr(CHAT_TOOL), "tool_choice": CHAT_TOOL_CHOICE,
    "functions": Arr(FUNCTION),
    "function_call": OneOf("a string or an object", string=Enum("none", "auto"),
                           obj=Obj({"name": NAME_TOKEN})),
    "response_format": CHAT_RESPONSE_FORMAT,
    "modalities": Arr(Enum("text", "audio")),
    "audio": Obj({"format": Enum("wav", "aac", "mp3", "flac", "opus", "pcm16"),
                  "voice": OneOf("a string or an object", string=Enum(
                      "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse",
                      "marin", "cedar"), obj=Obj({"id": ID}))}),
    "prediction": Obj({"type": Enum("content"), "content": CHAT_CONTENT}),
    "reasoning_effort": REASONING_EFFORT, "verbosity": VERBOSITY,
    "service_tier": SERVICE_TIER, "safety_identifier": TEXT, "prompt_cache_key": TEXT,
    "prompt_cache_retention": Enum("in_memory", "24h"),
    "prompt_cache_options": Obj({"mode": Enum("implicit", "explicit"), "ttl": Enum("30m")}),
    "web_search_options": Obj({
        "search_context_size": Enum("low", "medium", "high"),
        "user_location": Obj({"type": Enum("approximate"), "approximate": Obj({
            "city": TEXT, "country": TEXT, "region": TEXT, "timezone": TEXT})})}),
}, required=("model", "messages"))


class ChatEvents(EventRestore):
    """Chat chunks: every string field of a choice's delta is a channel (content, refusal,
    reasoning_content, ...), each tool call's arguments another; a choice's finish_reason
    flushes its channels into that chunk."""

    last: dict[str, Any] | None = None

    def on_event(self, name: str | None, chunk: dict[str, Any]) -> list[bytes]:
        self.last = chunk
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            delta = choice.get("delta") or {}
            for field, value in list(delta.items()):
                if isinstance(value, str) and field != "role":
                    mode = self.content_mode if field == "content" else "text"
                    delta[field] = self.feed(("c", index, field), value, mode)
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                if isinstance(function.get("arguments"), str):
                    key = ("t", index, call.get("index", 0))
                    function["arguments"] = self.feed(key, function["arguments"], "json")
                if isinstance(function.get("name"), str):
                    function["name"] = self.vault.restore(function["name"])
            if choice.get("finish_reason") is not None:
                self._flush_into(index, delta)
                choice["delta"] = delta
            for field in ("logprobs", "message"):
                if choice.get(field) is not None:
                    choice[field] = self.whole(choice[field])
        return [event_bytes(name, chunk)]

    def _flush_into(self, index: int, delta: dict[str, Any]) -> None:
        for key, text in self.flush(("c", index)).items():
            delta[key[2]] = text + (delta.get(key[2]) or "")
        for key, text in self.flush(("t", index)).items():
            calls = delta.setdefault("tool_calls", [])
            call = next((c for c in calls if c.get("index", 0) == key[2]), None)
            if call is None:
                call = {"index": key[2], "function": {"arguments": ""}}
                calls.append(call)
            function = call.setdefault("function", {})
            function["arguments"] = text + (function.get("arguments") or "")

    def on_done(self) -> list[bytes]:
        if not self.channels or self.last is None or "choices" not in self.last:
            self.channels.clear()
            return []
        shell = {k: v for k, v in self.last.items() if k not in ("choices", "usage")}
        choices = []
        for index in sorted({k[1] for k in self.channels}):
            delta: dict[str, Any] = {}
            self._flush_into(index, delta)
            choices.append({"index": index, "delta": delta, "finish_reason": None})
        return [event_bytes(None, {**shell, "choices": choices})]


def _chat_json_reply(body: dict[str, Any]) -> bool:
    return _format_type(body.get("response_format")) in ("json_object", "json_schema")


def _format_type(value: Any) -> Any:
    return value.get("type") if isinstance(value, dict) else None


# --- completions and embeddings --------------------------------------------------------------

COMPLETIONS_BODY = Obj({
    "model": MODEL, "prompt": Tokens(), "suffix": TEXT,
    **_SAMPLING,
    "echo": BOOLEAN, "best_of": INTEGER,
    "logprobs": INTEGER,
}, required=("model", "prompt"))

EMBEDDINGS_BODY = Obj({
    "model": MODEL, "input": Tokens(), "dimensions": INTEGER,
    "encoding_format": Enum("float", "base64"), "user": TEXT,
}, required=("model", "input"))


class CompletionEvents(EventRestore):
    def on_event(self, name: str | None, chunk: dict[str, Any]) -> list[bytes]:
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if isinstance(choice.get("text"), str):
                choice["text"] = self.feed(("x", index), choice["text"], self.content_mode)
            if choice.get("finish_reason") is not None:
                held = self.flush(("x", index))
                choice["text"] = "".join(held.values()) + (choice.get("text") or "")
            if choice.get("logprobs") is not None:
                choice["logprobs"] = self.whole(choice["logprobs"])
        return [event_bytes(name, chunk)]


# --- Responses -------------------------------------------------------------------------------

RESPONSE_PART = Tagged({
    "input_text": Obj({"type": TAG, "text": TEXT, "prompt_cache_breakpoint": CACHE_BREAKPOINT}),
    "output_text": Obj({"type": TAG, "text": TEXT, "annotations": Arr(FREE),
                        "logprobs": Arr(FREE)}),
    "refusal": Obj({"type": TAG, "refusal": TEXT}),
    "summary_text": Obj({"type": TAG, "text": TEXT}),
    "reasoning_text": Obj({"type": TAG, "text": TEXT}),
    "input_image": Obj({"type": TAG, "image_url": Attach("image"), "file_id": Attach("image"),
                        "detail": Enum("auto", "low", "high", "original"),
                        "prompt_cache_breakpoint": CACHE_BREAKPOINT}),
    "input_file": Obj({"type": TAG, "file_data": Attach("file"), "file_id": Attach("file"),
                       "file_url": Attach("file"), "filename": TEXT,
                       "prompt_cache_breakpoint": CACHE_BREAKPOINT}),
    "input_audio": Obj({"type": TAG, "input_audio": Attach("audio")}),
})
RESPONSE_CONTENT = OneOf("a string or an array of content parts", string=TEXT,
                         array=Arr(RESPONSE_PART))
_ITEM: dict[str, Node] = {"type": TAG, "id": ID, "status": STATUS}
_CALLER = Tagged({"direct": Obj({"type": TAG}), "program": Obj({"type": TAG,
                                                                "caller_id": ID})})
RESPONSE_ITEM = Tagged({
    "message": Obj({**_ITEM, "role": Enum("user", "assistant", "system", "developer"),
                    "content": RESPONSE_CONTENT,
                    "phase": Enum("commentary", "final_answer")}),
    "function_call": Obj({**_ITEM, "call_id": ID, "name": NAME_TOKEN, "namespace": NAME_TOKEN,
                          "arguments": JSON_TEXT, "caller": _CALLER}),
    "function_call_output": Obj({**_ITEM, "call_id": ID, "name": NAME_TOKEN,
                                 "namespace": NAME_TOKEN, "output": RESPONSE_CONTENT,
                                 "caller": _CALLER}),
    "custom_tool_call": Obj({**_ITEM, "call_id": ID, "name": NAME_TOKEN,
                             "namespace": NAME_TOKEN, "input": TEXT, "caller": _CALLER}),
    "custom_tool_call_output": Obj({**_ITEM, "call_id": ID, "output": RESPONSE_CONTENT,
                                    "caller": _CALLER}),
    "reasoning": Obj({**_ITEM, "summary": Arr(RESPONSE_PART), "content": Arr(RESPONSE_PART),
                      "encrypted_content": OPAQUE_TOKEN}),
    "compaction": Obj({**_ITEM, "encrypted_content": OPAQUE_TOKEN}),
    "item_reference": Obj({"type": TAG, "id": ID}),
    "mcp_call": Obj({**_ITEM, "server_label": NAME_TOKEN, "name": NAME_TOKEN,
                     "arguments": JSON_TEXT, "output": TEXT,
                     "error": OneOf("a string or an object", string=TEXT, obj=FREE),
                     "approval_request_id": ID}),
    "mcp_approval_request": Obj({**_ITEM, "server_label": NAME_TOKEN, "name": NAME_TOKEN,
                                 "arguments": JSON_TEXT}),
    "mcp_approval_response": Obj({**_ITEM, "approval_request_id": ID, "approve": BOOLEAN,
                                  "reason": TEXT}),
    "image_generation_call": Obj({**_ITEM, "result": Attach("image"),
                                  "revised_prompt": TEXT}),
}, default="message")
RESPONSE_TOOL = Tagged({
    "function": Obj({"type": TAG, "name": NAME_TOKEN, "description": TEXT, "parameters": FREE,
                     "strict": BOOLEAN, "defer_loading": BOOLEAN}),
    "custom": Obj({"type": TAG, "name": NAME_TOKEN, "description": TEXT, "format": FREE,
                   "defer_loading": BOOLEAN}),
})
RESPONSE_TOOL_CHOICE = OneOf("a string or an object", string=Enum("none", "auto", "required"),
                             obj=Tagged({
                                 "function": Obj({"type": TAG, "name": NAME_TOKEN}),
                                 "custom": Obj({"type": TAG, "name": NAME_TOKEN}),
                                 "mcp": Obj({"type": TAG, "server_label": NAME_TOKEN,
                                             "name": NAME_TOKEN}),
                                 "allowed_tools": Obj({"type": TAG,
                                                       "mode": Enum("auto", "required"),
                                                       "tools": Arr(FREE)}),
                             }))
RESPONSES_BODY = Obj({
    "model": MODEL, "stream": BOOLEAN, "stream_options": STREAM_OPTIONS,
    "instructions": TEXT,
    "input": OneOf("a string or an array of input items", string=TEXT,
                   array=Arr(RESPONSE_ITEM)),
    "previous_response_id": ID,
    "conversation": OneOf("a conversation id or an object with its id", string=ID,
                          obj=Obj({"id": ID})),
    "tools": Arr(RESPONSE_TOOL), "tool_choice": RESPONSE_TOOL_CHOICE,
    "parallel_tool_calls": BOOLEAN, "max_tool_calls": INTEGER,
    "text": Obj({"format": Tagged({"text": Obj({"type": TAG}),
                                   "json_object": Obj({"type": TAG}),
                                   "json_schema": _json_schema_format(type=TAG)}),
                 "verbosity": VERBOSITY}),
    "reasoning": Obj({"effort": REASONING_EFFORT,
                      "summary": Enum("auto", "concise", "detailed"),
                      "generate_summary": Enum("auto", "concise", "detailed")}),
    "prompt": Obj({"id": ID, "version": ID,
                   "variables": Map(OneOf("a string or a content part", string=TEXT,
                                          obj=RESPONSE_PART))}),
    "include": Arr(Enum("file_search_call.results", "web_search_call.results",
                        "web_search_call.action.sources", "message.input_image.image_url",
                        "computer_call_output.output.image_url",
                        "code_interpreter_call.outputs", "reasoning.encrypted_content",
                        "message.output_text.logprobs")),
    "metadata": METADATA, "store": BOOLEAN, "background": BOOLEAN,
    "max_output_tokens": INTEGER, "top_logprobs": INTEGER,
    "temperature": NUMBER, "top_p": NUMBER, "truncation": Enum("auto", "disabled"),
    "service_tier": SERVICE_TIER, "user": TEXT, "safety_identifier": TEXT,
    "prompt_cache_key": TEXT, "prompt_cache_retention": Enum("in_memory", "24h"),
}, required=("model",))
RESPONSES_TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


class ResponsesEvents(EventRestore):
    """Responses events: each `*.delta` event's text is a channel keyed by its kind and
    position, flushed into a delta just before the matching `*.done`; every other event (the
    `.done` events with their full text, `response.completed` with the whole response) is
    restored whole. Notes the response id for stored-response lookups."""

    def on_event(self, name: str | None, event: dict[str, Any]) -> list[bytes]:
        kind = event.get("type", name)
        if not isinstance(kind, str):
            return [event_bytes(name, self.whole(event))]
        response = event.get("response")
        if isinstance(response, dict) and isinstance(response.get("id"), str):
            self.response_id = response["id"]
        where = (event.get("item_id"), event.get("output_index", 0),
                 event.get("content_index", event.get("summary_index", 0)))
        if kind.endswith(".delta") and isinstance(event.get("delta"), str):
            mode = "json" if "arguments" in kind else \
                self.content_mode if kind == "response.output_text.delta" else "text"
            event["delta"] = self.feed((kind, *where), event["delta"], mode)
            return [event_bytes(name, event)]
        out = []
        if kind.endswith(".done"):
            delta_kind = kind[:-len(".done")] + ".delta"
            for text in self.flush((delta_kind, *where)).values():
                fields = {k: event[k] for k in ("item_id", "output_index", "content_index",
                                                "summary_index", "sequence_number")
                          if k in event}
                out.append(event_bytes(delta_kind, {"type": delta_kind, **fields,
                                                    "delta": text}))
        out.append(event_bytes(name, self.whole(event)))
        return out


def _responses_json_reply(body: dict[str, Any]) -> bool:
    text = body.get("text")
    return isinstance(text, dict) and \
        _format_type(text.get("format")) in ("json_object", "json_schema")


# --- endpoints -------------------------------------------------------------------------------

def _is_done(event: SSEEvent) -> bool:
    return event.data.strip() == "[DONE]"


def _is_responses_terminal(event: SSEEvent) -> bool:
    return (event.event or _json_type(event.data)) in RESPONSES_TERMINAL


def _json_type(data: str) -> str | None:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) else None


def _error(message: str, request_id: str) -> dict[str, Any]:
    return {"message": message, "type": "upstream_error", "code": "stream_interrupted",
            "param": None, "request_id": request_id}


def _chat_stream_error(message: str, request_id: str) -> bytes:
    """A final event telling an SDK the stream failed; OpenAI SDKs raise on an `error`
    payload."""
    return event_bytes(None, {"error": _error(message, request_id)})


def _responses_stream_error(message: str, request_id: str) -> bytes:
    return event_bytes("error", {"type": "error", **_error(message, request_id)})


CHAT = Endpoint("/v1/chat/completions", "openai", "chat_completions", CHAT_BODY, ChatEvents,
                _is_done, _chat_stream_error, json_reply=_chat_json_reply, asks_usage=True)
COMPLETIONS = Endpoint("/v1/completions", "openai", "completions", COMPLETIONS_BODY,
                       CompletionEvents, _is_done, _chat_stream_error, asks_usage=True)
EMBEDDINGS = Endpoint("/v1/embeddings", "openai", "embeddings", EMBEDDINGS_BODY, None,
                      restores_reply=False, keyed_placeholders=True)
RESPONSES = Endpoint("/v1/responses", "openai", "responses", RESPONSES_BODY, ResponsesEvents,
                     _is_responses_terminal, _responses_stream_error,
                     json_reply=_responses_json_reply, keeps_state=True,
                     conversation="in_body")

# --- conversations (the upstream keeps them; the gateway keeps whose each is and its mapping) ---

CONVERSATION_ITEMS = Arr(RESPONSE_ITEM)
CONVERSATIONS = Endpoint("/v1/conversations", "openai", "conversations",
                         Obj({"items": CONVERSATION_ITEMS, "metadata": METADATA}), None,
                         keeps_state=True, conversation="creates")
CONVERSATION_UPDATE = Endpoint("/v1/conversations/{conversation_id}", "openai",
                               "conversations_update", Obj({"metadata": METADATA}), None,
                               keeps_state=True, conversation="in_path")
CONVERSATION_ITEMS_ADD = Endpoint("/v1/conversations/{conversation_id}/items", "openai",
                                  "conversations_items", Obj({"items": CONVERSATION_ITEMS}), None,
                                  keeps_state=True, conversation="in_path")
