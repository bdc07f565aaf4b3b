"""Connection-level protection, below the request pipeline: what a client can hold open and
for how long, and how bytes that are not HTTP are answered.

- A request head (request line and headers) must arrive whole within `header_timeout_s`: from
  the moment the connection opens for the first request, from its first byte for every later
  one. An idle keep-alive connection is closed after `idle_timeout_s` (aiohttp's own
  keep-alive timer, given our value).
- A worker holds at most `max_connections` connections, `max_connections_per_client` of them
  from one client address; one more is answered 503 `too_many_connections` and closed, without
  ever reaching the HTTP parser.
- A request aiohttp's parser refuses is answered in our JSON envelope with a fixed message per
  kind of problem (`classify`), a fresh request id and `Connection: close`. aiohttp's own answer
  is text that quotes the offending bytes back, and its log line does too.
- On shutdown the server logs `draining` with the requests in flight and `drained` once they
  finished or were cut at the deadline (aiohttp's `shutdown_timeout`).

aiohttp has no public hooks for any of this, so `GuardedHandler` subclasses its per-connection
`RequestHandler` and reads some of its private state: `_request_count` (requests parsed),
`_messages` (parsed, not yet handled), `_request_in_progress`, `_close`/`_force_close`, and
overrides `_process_keepalive` (to count idle closes) and `log_access` (aiohttp calls it after
every response: where a connection turns idle); `GuardedRunner` overrides
`AppRunner._make_server` and copies `Server._loop`/`_kwargs`. Checked against aiohttp 3.14;
tests/unit/ingress/test_connections.py fails if any of them moves.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.errors import (
    BadHttpRequest,
    GatewayError,
    HeadersTooLarge,
    PayloadTooLarge,
    TooManyConnections,
    TransferCodingUnsupported,
)
from gateway.ingress.middleware import new_request_id
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.settings import LimitSettings

log = get_logger("veil.connections")

REFUSAL_LINGER_S = 1.0  # a refused client's request is read and dropped this long, so the
# close does not reset the connection before the 503 is read
TOO_MANY_CONNECTIONS = TooManyConnections()
INTERNAL = GatewayError("Internal error.")


@dataclass(frozen=True)
class Rule:
    """One kind of protocol error: which parser errors it covers and the answer it gets.
    `reason` is the parser's message up to its first colon: llhttp's fixed description, never
    the quoted bytes that follow it."""

    kind: str
    matches: Callable[[HttpProcessingError, str], bool]
    error: GatewayError


def _rule(kind: str, matches: Callable[[HttpProcessingError, str], bool],
          error: type[GatewayError], message: str) -> Rule:
    return Rule(kind, matches, error(message, code=kind))


# In order: the first match decides. Every kind is a fixed label (metrics, logs, the code).
RULES = (
    _rule("header_too_large", lambda e, _: isinstance(e, LineTooLong), HeadersTooLarge,
          "The request line or a header field is longer than the gateway accepts."),
    _rule("too_many_headers", lambda _, r: r.startswith("Too many headers"), HeadersTooLarge,
          "The request has more header fields than the gateway accepts."),
    _rule("tls_on_plain_port", lambda e, r: isinstance(e, BadHttpMethod) and "HTTPS" in r,
          BadHttpRequest, "This port speaks plain HTTP; the request looks like TLS."),
    _rule("bad_method", lambda e, _: isinstance(e, BadHttpMethod), BadHttpRequest,
          "The request method is not a valid HTTP method."),
    _rule("bad_request_line", lambda e, _: isinstance(e, BadStatusLine), BadHttpRequest,
          "The request line is not valid HTTP/1.x (method, target, version, CRLF)."),
    _rule("bad_target", lambda e, _: isinstance(e, InvalidURLError), BadHttpRequest,
          "The request target is not a valid URL."),
    _rule("content_length_with_transfer_encoding",
          lambda _, r: "Content-Length" in r and "Transfer-Encoding" in r, BadHttpRequest,
          "Content-Length and Transfer-Encoding together are not accepted."),
    _rule("content_length_too_large",
          lambda _, r: "Content-Length" in r and "overflow" in r, PayloadTooLarge,
          "The declared Content-Length is larger than the gateway accepts."),
    _rule("bad_content_length", lambda _, r: "Content-Length" in r, BadHttpRequest,
          "The Content-Length header is not one valid length."),
    _rule("unsupported_transfer_coding",
          lambda _, r: r.startswith("Request has invalid `Transfer-Encoding`"),
          TransferCodingUnsupported,
          "Only the chunked transfer coding is supported (as the last coding)."),
    _rule("bad_transfer_encoding", lambda _, r: "Transfer-Encoding" in r, BadHttpRequest,
          "The Transfer-Encoding header is malformed (chunked must be the last coding)."),
    _rule("obs_fold", lambda _, r: "whitespace after header value" in r, BadHttpRequest,
          "Header continuation lines (obs-fold) are not accepted."),
    _rule("bad_chunked_body", lambda _, r: "chunk" in r.lower(), BadHttpRequest,
          "The chunked request body is malformed."),
    _rule("missing_host", lambda _, r: r.startswith("Missing 'Host'"), BadHttpRequest,
          "An HTTP/1.1 request must carry a Host header."),
    _rule("duplicate_header", lambda _, r: r.startswith("Duplicate"), BadHttpRequest,
          "A header that may appear once appears more than once."),
    _rule("bad_header", lambda e, r: isinstance(e, InvalidHeader) or "header" in r.lower()
          or "LF" in r, BadHttpRequest,
          "A header field is malformed (a bad name, a control character or NUL, a bare CR)."),
)
FALLBACK = _rule("bad_http_request", lambda _e, _r: True, BadHttpRequest,
                 "The request is not valid HTTP.")
KINDS = frozenset(rule.kind for rule in (*RULES, FALLBACK))


def classify(exc: HttpProcessingError) -> Rule:
    """The kind of protocol error `exc` is (FALLBACK if none matches more closely)."""
    reason = str(exc.message).partition(":")[0]
    return next((rule for rule in RULES if rule.matches(exc, reason)), FALLBACK)


def raw_answer(error: GatewayError) -> bytes:
    """A whole HTTP/1.1 response for `error`, for a connection that never reached aiohttp."""
    request_id = new_request_id()
    body = json.dumps(error.envelope(request_id)).encode()
    lines = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}",
             "Content-Type: application/json; charset=utf-8", f"Content-Length: {len(body)}",
             "Connection: close", "Server: veil", f"X-Request-ID: {request_id}",
             *(f"{name}: {value}" for name, value in error.headers.items())]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def _client_of(transport: asyncio.BaseTransport) -> str:
    """The client's address (without the port): what the per-client cap counts."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


@dataclass
class Guard:
    """What every connection of one server shares: the limits and the count of open ones."""

    limits: LimitSettings
    metrics: Metrics
    per_client: Counter[str] = field(default_factory=Counter)
    open: int = 0

    def admit(self, client: str) -> str | None:
        """Count the connection in, or say which cap refuses it."""
        if self.open >= self.limits.max_connections:
            return "max_connections"
        if self.per_client[client] >= self.limits.max_connections_per_client:
            return "max_connections_per_client"
        self.open += 1
        self.per_client[client] += 1
        self.metrics.connections_now = self.open
        return None

    def release(self, client: str) -> None:
        self.open -= 1
        self.per_client[client] -= 1
        if not self.per_client[client]:
            del self.per_client[client]  # the table holds only clients with connections
        self.metrics.connections_now = self.open

    def closed(self, reason: str) -> None:
        """A connection the guard closed or refused (`reason`: a fixed label)."""
        self.metrics.connection_closed(reason)
        log.info("connection_closed", reason=reason)


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol, with the header timer, the caps and JSON answers
    for protocol errors."""

    __slots__ = ("_admitted", "_awaiting_head", "_client", "_guard", "_head_timer")

    def __init__(self, manager: web.Server, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._client = ""
        self._admitted = False
        self._awaiting_head = True  # the next bytes are a request head, not a body
        self._head_timer: asyncio.TimerHandle | None = None

    @property
    def busy(self) -> bool:
        """A request is parsed and waiting or being handled (its body may still arrive)."""
        return self._request_in_progress or bool(self._messages)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client = _client_of(transport)
        refusal = self._guard.admit(self._client)
        if refusal is not None:
            self._refuse(transport, refusal)
            return
        self._admitted = True
        super().connection_made(transport)
        self._start_head_timer()  # the first head is timed from the connection's opening

    def _refuse(self, transport: asyncio.BaseTransport, reason: str) -> None:
        """Answer 503 and close, without a task or a parser run: a refused client costs one
        write. The write side is shut first and what the client sends meanwhile is dropped,
        so its request in flight does not turn the close into a reset that loses the 503."""
        self._guard.closed(reason)
        stream = cast(asyncio.Transport, transport)  # as aiohttp's: a server's is a stream's
        stream.write(raw_answer(TOO_MANY_CONNECTIONS))
        if stream.can_write_eof():
            stream.write_eof()
        self._loop.call_later(REFUSAL_LINGER_S, stream.close)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        if not self._admitted:
            return  # refused: aiohttp never saw this connection
        self._admitted = False
        self._guard.release(self._client)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return  # refused: dropped until the linger ends
        if data and self._awaiting_head and self._head_timer is None and not self.busy:
            self._start_head_timer()  # the first byte of a later request's head
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._awaiting_head = False  # a whole head arrived (or an error in it)
            self._cancel_head_timer()

    def log_access(self, request: BaseRequest, response: web.StreamResponse,
                   time: float | None) -> None:
        """aiohttp calls this once a response is written whole (access logging or not): from
        here the connection's next bytes are the next request's head. Before it, they are the
        current request's body, even in the moment between its head being parsed and its
        handler starting."""
        self._awaiting_head = True
        super().log_access(request, response, time)

    def _start_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._guard.limits.header_timeout_s,
                                                 self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.busy or self._force_close or self.transport is None:
            return  # a request started meanwhile: its body and handler have their own limits
        self._guard.closed("header_timeout")
        self.force_close()

    def _process_keepalive(self) -> None:
        """aiohttp's idle timer, counted when it closes the connection."""
        was_open = not self._force_close
        super()._process_keepalive()
        if was_open and self._force_close:
            self._guard.closed("idle_timeout")

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Our envelope instead of aiohttp's text, which quotes the request's bytes (and so
        does the log line aiohttp writes here, which is why this does not call it)."""
        if request.writer.output_size > 0:  # as aiohttp: a response already began
            raise ConnectionError("Response is sent already, cannot send another response")
        if isinstance(exc, HttpProcessingError):
            rule = classify(exc)
            error = rule.error
            self._guard.metrics.protocol_error(rule.kind)
            log.info("protocol_error", kind=rule.kind, status=error.status)
        else:
            error = INTERNAL
            log.error("unhandled_error", error_type=type(exc).__name__, status=status)
        request_id = new_request_id()
        response = web.json_response(error.envelope(request_id), status=error.status,
                                     headers={**error.headers, "X-Request-ID": request_id,
                                              hdrs.SERVER: "veil", hdrs.CONNECTION: "close"})
        response.force_close()  # said outright: aiohttp answers these as HTTP/1.0
        return response


class GuardedServer(web.Server):
    """aiohttp's server, making `GuardedHandler`s and logging the drain at shutdown."""

    def __init__(self, plain: web.Server, guard: Guard) -> None:
        super().__init__(plain.request_handler, request_factory=plain.request_factory,
                         handler_cancellation=plain.handler_cancellation, loop=plain._loop,
                         **plain._kwargs)
        self._guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, self._guard, loop=self._loop, **self._kwargs)

    def in_flight(self) -> int:
        return sum(1 for c in self.connections if isinstance(c, GuardedHandler) and c.busy)

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's)
        """Let requests in flight finish until `timeout`, then cut them. aiohttp alone would
        give them twice that: past the timeout it fails only the request's body and waits
        `timeout` again before cancelling, and a stream reads no body. Closing the connection
        cancels the handler at once (handler_cancellation)."""
        log.info("draining", in_flight=self.in_flight(), connections=len(self.connections),
                 timeout_s=timeout)
        drain = asyncio.ensure_future(super().shutdown(timeout))
        done, _ = await asyncio.wait({drain}, timeout=timeout)
        busy = [] if done else [c for c in self.connections
                                if isinstance(c, GuardedHandler) and c.busy]
        if busy:
            log.warning("drain_deadline", cut=len(busy), timeout_s=timeout)
            for handler in busy:
                handler.force_close()
        await drain
        log.info("drained", cut=len(busy))


class GuardedRunner(web.AppRunner):
    """aiohttp's runner, serving with a `GuardedServer`."""

    def __init__(self, app: web.Application, guard: Guard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guard = guard

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), self._guard)
