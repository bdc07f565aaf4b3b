"""Upstreams that misbehave on purpose, each a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading

from aiohttp import web

CHUNK = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "part "}, "finish_reason": None}]}


def sse(obj: object) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


class FaultyUpstream:
    """Counts requests; behaviour chosen by `mode`."""

    def __init__(self, mode: str, *, status: int = 500, delay: float = 0.0) -> None:
        self.mode = mode
        self.status = status
        self.delay = delay
        self.requests = 0
        self.disconnected = threading.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await request.read()
        if self.mode == "status":
            return web.json_response(
                {"error": {"message": "upstream says no", "type": "server_error"}},
                status=self.status)
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
            return web.json_response({"late": True})
        if self.mode in ("truncated_json", "stall_body"):
            reply = web.StreamResponse(headers={"Content-Type": "application/json"})
            await reply.prepare(request)
            await reply.write(b'{"id": "chatcmpl-1", "object": "chat.completion", "choi')
            if self.mode == "stall_body":
                await asyncio.sleep(self.delay)  # headers sent, the body stops coming
            await reply.write_eof()  # a complete HTTP message holding half a JSON document
            return reply
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(CHUNK))
        await response.write(sse(CHUNK))
        if self.mode == "die_mid_stream":
            assert request.transport is not None
            request.transport.abort()  # no terminating chunk: the stream is cut
            return response
        if self.mode == "stall_mid_stream":
            await asyncio.sleep(self.delay)
            return response
        if self.mode == "end_without_done":
            await response.write_eof()
            return response
        if self.mode == "endless":
            try:
                while True:
                    await asyncio.sleep(0.05)
                    await response.write(sse(CHUNK))
            except (ConnectionResetError, asyncio.CancelledError):
                self.disconnected.set()
                raise
        raise AssertionError(self.mode)
