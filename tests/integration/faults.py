"""Upstreams that misbehave on purpose, each a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading

from aiohttp import web

CHUNK = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "part "}, "finish_reason": None}]}


COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "fine"}}]}


def sse(obj: object) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


class FaultyUpstream:
    """Counts requests; behaviour chosen by `mode`."""

    def __init__(self, mode: str, *, status: int = 500, delay: float = 0.0,
                 headers: dict[str, str] | None = None, health_status: int = 200) -> None:
        self.mode = mode
        self.status = status
        self.delay = delay
        self.headers = headers or {}
        self.health_status = health_status
        self.requests = 0
        self.probes = 0
        self.bodies: list[bytes] = []
        self.disconnected = threading.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def health(self, _: web.Request) -> web.Response:
        self.probes += 1
        return web.json_response({"ok": self.health_status == 200}, status=self.health_status)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.bodies.append(await request.read())
        if self.mode in ("status", "echo_error", "ok", "slow"):
            return await self._whole(request)
        if self.mode in ("truncated_json", "stall_body"):
            reply = web.StreamResponse(headers={"Content-Type": "application/json"})
            await reply.prepare(request)
            await reply.write(b'{"id": "chatcmpl-1", "object": "chat.completion", "choi')
            if self.mode == "stall_body":
                await asyncio.sleep(self.delay)  # headers sent, the body stops coming
            await reply.write_eof()  # a complete HTTP message holding half a JSON document
            return reply
        return await self._stream(request)

    async def _whole(self, request: web.Request) -> web.Response:
        if self.mode == "status":
            return web.json_response(
                {"error": {"message": "upstream says no", "type": "server_error"}},
                status=self.status, headers=self.headers)
        if self.mode == "echo_error":  # a validation error that quotes what it was sent
            said = (await request.json())["messages"][-1]["content"]
            return web.json_response(
                {"error": {"message": f"Invalid content: '{said}'", "type": "invalid_request_error",
                           "param": "messages", "code": "invalid_value"}}, status=self.status)
        if self.mode == "ok":
            await asyncio.sleep(self.delay)
            return web.json_response(COMPLETION)
        await asyncio.sleep(self.delay)  # slow
        return web.json_response({"late": True})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
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
        if self.mode in ("not_json_event", "garbage_line"):  # then finishes as if all was well
            await response.write(b'data: {"id": not json]\n\n' if self.mode == "not_json_event"
                                 else b"\x00\xff garbage\n\n")
            await response.write(sse({**CHUNK, "choices": [{"index": 0, "delta": {},
                                                             "finish_reason": "stop"}]}))
            await response.write(b"data: [DONE]\n\n")
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
