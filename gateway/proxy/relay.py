"""Relay an upstream answer to the client: whole JSON bodies, or SSE event by event.

A stream is written to the client as each event completes; `write` waits for the client to
drain, which is the backpressure. If the upstream breaks, stalls past its read timeout or ends
without its terminal event, the client gets one final error event and a clean end of stream,
never a hang. If the client goes away, the upstream connection is closed at once (the handler
is cancelled, and `finally` closes it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.api import ApiRequest
from gateway.api.sse import SSEDecoder, SSEEvent
from gateway.errors import (
    BodyTooLarge,
    SSEError,
    StreamFormatError,
    UpstreamFailed,
    UpstreamTimeout,
)
from gateway.observability.logging import get_logger
from gateway.offload import off_loop_if_big
from gateway.proxy.reply_headers import reply_headers
from gateway.streams import read_at_most

log = get_logger("veil.relay")

# Set on a stream the upstream broke (after the headers, so it could not fail over): counted
# against that backend's health like any failure.
STREAM_BROKE = web.ResponseKey("stream_broke", str)


async def relay_body(upstream: aiohttp.ClientResponse, limit: int,
                     transform: Callable[[bytes], bytes] | None = None,
                     read: Callable[[Any], None] | None = None) -> web.Response:
    """Read the whole upstream body (bounded), check that a successful one is JSON, hand
    it, parsed, to `read` (its usage is counted), transform it (restore), answer with it."""
    try:
        body = await _read_bounded(upstream, limit)
    except TimeoutError as exc:  # before ClientError: aiohttp's read timeout is both
        upstream.close()
        raise UpstreamTimeout("Upstream stopped sending the response (read timeout).") from exc
    except aiohttp.ClientError as exc:
        upstream.close()
        raise UpstreamFailed("Upstream connection broke while sending the response.",
                             code="upstream_interrupted") from exc
    except BaseException:
        upstream.close()
        raise
    upstream.release()  # fully read: the connection goes back to the pool
    if upstream.status < 300:
        parsed = await off_loop_if_big(len(body), _parsed, body)
        if parsed is NOT_JSON:
            # A cut-short or garbled reply would reach the client as a 200 it cannot parse.
            raise UpstreamFailed("Upstream sent a reply that is not valid JSON (it may have "
                                 "been cut short).", code="upstream_invalid_reply")
        if read is not None:
            read(parsed)
    if transform is not None:
        body = await off_loop_if_big(len(body), transform, body)
    # (X-Request-ID and the policy digest are added by the request middleware.)
    return web.Response(status=upstream.status, body=body,
                        headers=reply_headers(upstream.headers))


NOT_JSON = object()


def _parsed(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return NOT_JSON


async def _read_bounded(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    try:
        return await read_at_most(upstream.content, limit)
    except BodyTooLarge:
        raise UpstreamFailed(f"Upstream response exceeded {limit} bytes.",
                             code="upstream_response_too_large") from None


Rewrite = Callable[[SSEEvent], list[bytes]]


async def relay_stream(request: web.Request, api_request: ApiRequest,
                       upstream: aiohttp.ClientResponse, request_id: str, *,
                       rewrite: Rewrite | None = None,
                       stamp: Mapping[str, str] | None = None) -> web.StreamResponse:
    """Relay event by event. `stamp`: the gateway's own headers (the policy digest), which
    must be set here because the headers leave before the middleware sees the response."""
    headers = reply_headers(upstream.headers)
    headers.update({"X-Request-ID": request_id, "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no", **(stamp or {})})
    response = web.StreamResponse(status=upstream.status, headers=headers)
    endpoint = api_request.endpoint
    problem: str | None = "Upstream closed the stream before it finished."
    try:
        await response.prepare(request)
        async for event in _events(upstream):
            for piece in rewrite(event) if rewrite else (event.encode(),):
                await response.write(piece)
            if endpoint.is_terminal(event):
                problem = None
                break
    except ConnectionResetError:
        log.info("client_disconnected", route=endpoint.name)
        upstream.close()
        return response
    except TimeoutError:
        problem = "Upstream stopped sending (read timeout)."
    except aiohttp.ClientError:
        problem = "Upstream connection broke mid-stream."
    except SSEError:
        problem = "Upstream sent an event larger than allowed."
    except StreamFormatError:
        problem = "Upstream sent an event the gateway cannot restore; the stream was stopped."
    except BaseException:
        upstream.close()  # cancelled (the client went away): drop the upstream request now
        raise
    if problem:
        upstream.close()
        response[STREAM_BROKE] = problem
        log.warning("stream_interrupted", route=endpoint.name, reason=problem)
        await _finish(response, endpoint.stream_error(problem, request_id))
    else:
        await _finish(response, b"")
        task = asyncio.create_task(_return_to_pool(upstream))
        _returning.add(task)
        task.add_done_callback(_returning.discard)
    return response


_returning: set[asyncio.Task[None]] = set()  # strong references until each task finishes


async def _return_to_pool(upstream: aiohttp.ClientResponse) -> None:
    """After the terminal event the upstream body normally ends at once; reading that end
    lets the connection be reused instead of reconnecting for every stream. It runs after the
    handler returned, so neither this client nor its next request on the connection waits."""
    try:
        async with asyncio.timeout(0.25):
            while await upstream.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        upstream.close()
        return
    upstream.release()


async def _events(upstream: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent]:
    decoder = SSEDecoder()
    async for chunk in upstream.content.iter_any():
        for event in decoder.feed(chunk):
            yield event


async def _finish(response: web.StreamResponse, last: bytes) -> None:
    try:
        if last:
            await response.write(last)
        await response.write_eof()
    except ConnectionResetError:
        log.info("client_disconnected")
