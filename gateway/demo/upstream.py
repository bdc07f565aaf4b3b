"""A deterministic OpenAI- and Anthropic-compatible model server whose reply repeats what it
received, so you can see exactly what left your perimeter. `GET /_demo/last` returns the last
request body as JSON; `GET /_demo/last/headers` its headers; `GET /_demo/stats` request counts.
Responses are stored like OpenAI's (`store` not false): readable, listable and deletable by id,
and a request that continues one (`previous_response_id`) quotes its input in the reply;
conversations (`/v1/conversations`) likewise, the reply quoting the conversation so far.

Not a model: it exists so that `make run` and the tests have an upstream that tells the truth
about what the gateway forwarded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.demo import conversations as demo_conversations
from gateway.demo.conversations import DemoConversation

CREATED = 1_700_000_000
CHUNK_CHARS = 6
EMBEDDING_DIM = 16


@dataclass
class DemoState:
    chunk_delay_s: float = 0.0
    required_key: str | None = None
    last_body: Any = None
    last_headers: dict[str, str] = field(default_factory=dict)
    received: list[bytes] = field(default_factory=list)  # every raw body, for leak checks
    counts: Counter[str] = field(default_factory=Counter)
    # stored Responses: id -> (response object, input items)
    responses: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = field(
        default_factory=dict)
    conversations: dict[str, DemoConversation] = field(default_factory=dict)


DEMO = web.AppKey("demo", DemoState)


def build_demo_app(chunk_delay_ms: float = 0.0, required_key: str | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[DEMO] = DemoState(chunk_delay_ms / 1000.0, required_key)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/responses/{rid}", stored_response)
    app.router.add_get("/v1/responses/{rid}/input_items", stored_input_items)
    app.router.add_delete("/v1/responses/{rid}", delete_response)
    demo_conversations.routes(app, app[DEMO].conversations, _receive)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/_demo/last", last_body)
    app.router.add_get("/_demo/last/headers", last_headers)
    app.router.add_get("/_demo/stats", stats)
    return app


def run(host: str, port: int, chunk_delay_ms: float) -> None:
    print(f"demo model server on http://{host}:{port} "
          f"(last request: http://{host}:{port}/_demo/last)", flush=True)
    web.run_app(build_demo_app(chunk_delay_ms), host=host, port=port, print=None,
                access_log=None)


# --- request intake -------------------------------------------------------------------------

async def _receive(request: web.Request) -> tuple[DemoState, dict[str, Any]]:
    state = request.app[DEMO]
    if state.required_key is not None:
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() \
            or request.headers.get("x-api-key", "")
        if presented != state.required_key:
            raise web.HTTPUnauthorized(text=json.dumps({"error": {"message": "bad upstream key",
                                       "type": "authentication_error"}}),
                                       content_type="application/json")
    raw = await request.read()
    state.received.append(raw)
    del state.received[:-1000]  # bounded: the demo keeps the last thousand
    body = json.loads(raw)
    state.last_body = body
    state.last_headers = {k.lower(): v for k, v in request.headers.items()}
    state.counts[request.path] += 1
    return state, body


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content
                        if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _reply_text(count: int, noun: str, text: str) -> str:
    return f"Demo model received {count} {noun}. Last user message: {text}"


def _words(text: str) -> int:
    return len(text.split())


def _chunks(text: str) -> Iterator[str]:
    for i in range(0, len(text), CHUNK_CHARS):
        yield text[i:i + CHUNK_CHARS]


def _id(prefix: str, body: Any) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return f"{prefix}{digest}"


async def _sse(request: web.Request, events: Iterator[bytes], delay: float) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    for i, event in enumerate(events):
        if i and delay:
            await asyncio.sleep(delay)  # pace between events; end the body right after the last
        await response.write(event)
    await response.write_eof()
    return response


def _data(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _named(name: str, obj: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


# --- OpenAI chat ----------------------------------------------------------------------------

async def chat_completions(request: web.Request) -> web.StreamResponse:
    state, body = await _receive(request)
    messages = body.get("messages") or []
    text = _reply_text(len(messages), "messages", _last_user_text(messages))
    tool = _first_tool(body)
    arguments = json.dumps({"echo": _last_user_text(messages)}) if tool else ""
    cid, model = _id("chatcmpl-demo-", body), body.get("model", "demo")
    prompt_tokens = sum(_words(_text_of(m.get("content"))) for m in messages)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _words(text or arguments),
             "total_tokens": prompt_tokens + _words(text or arguments)}
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": None if tool else text}
        if tool:
            message["tool_calls"] = [{"id": "call_demo_1", "type": "function",
                                      "function": {"name": tool, "arguments": arguments}}]
        return web.json_response({
            "id": cid, "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if tool else "stop"}],
            "usage": usage})
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    events = _chat_events(cid, model, text, tool=tool, arguments=arguments, usage=usage,
                          include_usage=include_usage)
    return await _sse(request, events, state.chunk_delay_s)


def _first_tool(body: dict[str, Any]) -> str | None:
    tools = body.get("tools") or []
    if not tools or body.get("tool_choice") == "none":
        return None
    function = tools[0].get("function") or {}
    return str(function.get("name", "tool"))


def _chat_events(cid: str, model: str, text: str, *, tool: str | None, arguments: str,
                 usage: dict[str, int], include_usage: bool) -> Iterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _data({"id": cid, "object": "chat.completion.chunk", "created": CREATED,
                      "model": model, "choices": [{"index": 0, "delta": delta,
                                                   "logprobs": None, "finish_reason": finish}],
                      **({"usage": None} if include_usage else {})})  # as OpenAI sends it

    if tool:
        yield chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_demo_1", "type": "function",
             "function": {"name": tool, "arguments": ""}}]})
        for piece in _chunks(arguments):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        yield chunk({}, "tool_calls")
    else:
        yield chunk({"role": "assistant", "content": ""})
        for piece in _chunks(text):
            yield chunk({"content": piece})
        yield chunk({}, "stop")
    if include_usage:
        yield _data({"id": cid, "object": "chat.completion.chunk", "created": CREATED,
                     "model": model, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


# --- OpenAI completions, embeddings, responses ----------------------------------------------

async def completions(request: web.Request) -> web.StreamResponse:
    state, body = await _receive(request)
    prompt = body.get("prompt")
    prompt_text = prompt if isinstance(prompt, str) else " ".join(
        p for p in (prompt or []) if isinstance(p, str))
    text = f"Demo model received a prompt: {prompt_text}"
    cid, model = _id("cmpl-demo-", body), body.get("model", "demo")

    def choice(piece: str, finish: str | None) -> dict[str, Any]:
        return {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish}

    usage = {"prompt_tokens": _words(prompt_text), "completion_tokens": _words(text),
             "total_tokens": _words(prompt_text) + _words(text)}
    if not body.get("stream"):
        return web.json_response({
            "id": cid, "object": "text_completion", "created": CREATED, "model": model,
            "choices": [choice(text, "stop")], "usage": usage})
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def events() -> Iterator[bytes]:
        pieces = list(_chunks(text))
        for i, piece in enumerate(pieces):
            yield _data({"id": cid, "object": "text_completion", "created": CREATED,
                         "model": model,
                         "choices": [choice(piece, "stop" if i == len(pieces) - 1 else None)]})
        if include_usage:
            yield _data({"id": cid, "object": "text_completion", "created": CREATED,
                         "model": model, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    return await _sse(request, events(), state.chunk_delay_s)


def _embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [b - 127.5 for b in digest[:EMBEDDING_DIM]]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


async def embeddings(request: web.Request) -> web.Response:
    _, body = await _receive(request)
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else [str(i) for i in inputs or []]
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(texts):
        vector = _embedding(text)
        encoded: Any = (base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                        if as_base64 else vector)
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = sum(_words(t) for t in texts)
    return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _responses_input_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    texts = [_text_of(item.get("content")) for item in value or []
             if isinstance(item, dict) and item.get("role", "user") == "user"]
    return texts[-1] if texts else ""


def _response_object(rid: str, model: str, text: str, status: str,
                     input_tokens: int) -> dict[str, Any]:
    output = [] if status != "completed" else [_message_item(rid, text, "completed")]
    return {"id": rid, "object": "response", "created_at": CREATED, "status": status,
            "model": model, "output": output, "error": None, "incomplete_details": None,
            "instructions": None, "metadata": {}, "parallel_tool_calls": True,
            "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto", "tools": [],
            "text": {"format": {"type": "text"}},
            "usage": {"input_tokens": input_tokens, "output_tokens": _words(text),
                      "total_tokens": input_tokens + _words(text),
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


def _message_item(rid: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if text else []
    return {"type": "message", "id": f"msg_{rid[5:]}", "status": status, "role": "assistant",
            "content": content}


def _input_items(rid: str, value: Any) -> list[dict[str, Any]]:
    """The request's input as the items `GET .../input_items` lists."""
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    items = []
    for i, item in enumerate(value or []):
        if not isinstance(item, dict):
            continue
        content = item.get("content")
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        items.append({"id": f"msg_{rid[9:]}_{i}", "type": item.get("type", "message"),
                      "status": "completed", **item, "content": content})
    return items


async def responses(request: web.Request) -> web.StreamResponse:
    state, body = await _receive(request)
    user_text = _responses_input_text(body.get("input"))
    text = f"Demo model received input. Last user message: {user_text}"
    previous = state.responses.get(str(body.get("previous_response_id")))
    if previous is not None:
        earlier = " ".join(_text_of(i.get("content")) for i in previous[1])
        text = f"{text} (continuing from: {earlier})"
    named = body.get("conversation")
    conversation = state.conversations.get(
        str(named.get("id") if isinstance(named, dict) else named))
    if named is not None and conversation is None:
        return _not_found()
    rid, model = _id("resp_demo", body), body.get("model", "demo")
    if conversation is not None:
        text = f"{text} (conversation so far: {conversation.text()})"
        conversation.add(_input_items(rid, body.get("input")))
        conversation.add([_message_item(rid, text, "completed")])
    tokens = _words(user_text)
    if body.get("store") is not False:
        state.responses[rid] = (_response_object(rid, model, text, "completed", tokens),
                                _input_items(rid, body.get("input")))
    if not body.get("stream"):
        return web.json_response(_response_object(rid, model, text, "completed", tokens))
    return await _sse(request, _response_events(rid, model, text, tokens),
                      state.chunk_delay_s)


async def stored_response(request: web.Request) -> web.StreamResponse:
    state = request.app[DEMO]
    found = state.responses.get(request.match_info["rid"])
    if found is None:
        return _not_found()
    response = found[0]
    if request.query.get("stream") == "true":
        text = response["output"][0]["content"][0]["text"]
        events = _response_events(response["id"], response["model"], text,
                                  response["usage"]["input_tokens"])
        return await _sse(request, events, state.chunk_delay_s)
    return web.json_response(response)


async def stored_input_items(request: web.Request) -> web.Response:
    found = request.app[DEMO].responses.get(request.match_info["rid"])
    if found is None:
        return _not_found()
    items = found[1]
    return web.json_response({"object": "list", "data": items, "has_more": False,
                              "first_id": items[0]["id"] if items else None,
                              "last_id": items[-1]["id"] if items else None})


async def delete_response(request: web.Request) -> web.Response:
    rid = request.match_info["rid"]
    if request.app[DEMO].responses.pop(rid, None) is None:
        return _not_found()
    return web.json_response({"id": rid, "object": "response", "deleted": True})


def _not_found() -> web.Response:
    return web.json_response({"error": {"message": "No response found with that id.",
                                        "type": "invalid_request_error", "param": None,
                                        "code": "not_found"}}, status=404)


def _response_events(rid: str, model: str, text: str, tokens: int) -> Iterator[bytes]:
    seq = iter(range(1_000_000))
    item_id = f"msg_{rid[5:]}"

    def event(kind: str, **fields: Any) -> bytes:
        return _named(kind, {"type": kind, "sequence_number": next(seq), **fields})

    yield event("response.created",
                response=_response_object(rid, model, "", "in_progress", tokens))
    yield event("response.output_item.added", output_index=0,
                item=_message_item(rid, "", "in_progress"))
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    yield event("response.content_part.added", **where, part=part)
    for piece in _chunks(text):
        yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
    yield event("response.output_text.done", **where, text=text, logprobs=[])
    yield event("response.content_part.done", **where, part={**part, "text": text})
    yield event("response.output_item.done", output_index=0,
                item=_message_item(rid, text, "completed"))
    yield event("response.completed",
                response=_response_object(rid, model, text, "completed", tokens))


# --- Anthropic messages ---------------------------------------------------------------------

async def messages(request: web.Request) -> web.StreamResponse:
    state, body = await _receive(request)
    history = body.get("messages") or []
    text = _reply_text(len(history), "messages", _last_user_text(history))
    tools = body.get("tools") or []
    tool = str(tools[0].get("name", "tool")) if tools else None
    tool_input = {"echo": _last_user_text(history)}
    mid, model = _id("msg_demo", body), body.get("model", "demo")
    input_tokens = sum(_words(_text_of(m.get("content"))) for m in history)
    block: dict[str, Any] = ({"type": "tool_use", "id": "toolu_demo_1", "name": tool,
                              "input": tool_input} if tool else {"type": "text", "text": text})
    stop_reason = "tool_use" if tool else "end_turn"
    if not body.get("stream"):
        return web.json_response({
            "id": mid, "type": "message", "role": "assistant", "model": model,
            "content": [block], "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": _words(text)}})

    def events() -> Iterator[bytes]:
        yield _named("message_start", {"type": "message_start", "message": {
            "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1}}})
        start = {**block, "input": {}} if tool else {"type": "text", "text": ""}
        yield _named("content_block_start",
                     {"type": "content_block_start", "index": 0, "content_block": start})
        yield _named("ping", {"type": "ping"})
        if tool:
            deltas = [{"type": "input_json_delta", "partial_json": piece}
                      for piece in _chunks(json.dumps(tool_input))]
        else:
            deltas = [{"type": "text_delta", "text": piece} for piece in _chunks(text)]
        for delta in deltas:
            yield _named("content_block_delta",
                         {"type": "content_block_delta", "index": 0, "delta": delta})
        yield _named("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _named("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": stop_reason,
                                                 "stop_sequence": None},
                                       "usage": {"output_tokens": _words(text)}})
        yield _named("message_stop", {"type": "message_stop"})

    return await _sse(request, events(), state.chunk_delay_s)


async def count_tokens(request: web.Request) -> web.Response:
    _, body = await _receive(request)
    history = body.get("messages") or []
    system = body.get("system")
    words = sum(_words(_text_of(m.get("content"))) for m in history if isinstance(m, dict))
    return web.json_response({"input_tokens": words + _words(_text_of(system))})


# --- introspection --------------------------------------------------------------------------

async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": "demo", "object": "model", "created": CREATED, "owned_by": "veil-demo"}]})


async def last_body(request: web.Request) -> web.Response:
    state = request.app[DEMO]
    if state.last_body is None:
        return web.json_response({"error": "no request received yet"}, status=404)
    return web.json_response(state.last_body)


async def last_headers(request: web.Request) -> web.Response:
    return web.json_response(request.app[DEMO].last_headers)


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"requests": dict(request.app[DEMO].counts)})
