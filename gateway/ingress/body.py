"""Read and decode a JSON request body under a size limit, with errors that never quote it."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.api.structure import MAX_DEPTH as MAX_NESTING
from gateway.errors import InvalidRequest, PayloadTooLarge

READ_CHUNK = 64 * 1024


async def read_body(request: web.Request, limit: int) -> bytes:
    """Refuse early on a declared Content-Length over the limit; count while reading otherwise."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit}.")
    if request.content.is_eof():  # all of it has arrived already: no waiting
        body = request.content.read_nowait()
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        return body
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """Strict JSON (orjson: no NaN/Infinity, nesting capped), UTF-8, top level an object."""
    if not raw:
        raise InvalidRequest("Request body is empty; expected a JSON object.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _decode_error(raw, exc) from None
    if not isinstance(data, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_json")
    if raw.count(b"{") + raw.count(b"[") > MAX_NESTING and _deeper_than(data, MAX_NESTING):
        raise InvalidRequest(f"Request body nests deeper than {MAX_NESTING} levels.",
                             code="too_deep")
    return data


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether any value sits more than `limit` containers deep, found without recursion
    (the parser accepts 1,024 levels; re-serialising and walking such a body would fail
    later, as a 500, after work was spent on it)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return False


def _decode_error(raw: bytes, exc: orjson.JSONDecodeError) -> InvalidRequest:
    """Say what is wrong and where, from the parser's short reason only: the full exception
    text of some parsers quotes the document, and the document is the client's data."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return InvalidRequest(f"Request body is not valid UTF-8 (byte offset {bad.start}).",
                              code="invalid_encoding")
    return InvalidRequest(
        f"Request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
        code="invalid_json")
