"""Read and decode a JSON request body under a size limit, with errors that never quote it."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

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
    return data


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
