"""The connection guard's pieces on their own: how parser errors are classified (pinned to the
messages aiohttp's parsers write today), the caps' bookkeeping, the raw 503, and every private
piece of aiohttp that gateway/ingress/connections.py relies on: an aiohttp upgrade that moves
one fails here, loudly, instead of quietly serving without protection."""

from __future__ import annotations

import asyncio
import inspect
import json

import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, HttpRequestParserPy
from aiohttp.web_protocol import RequestHandler

from gateway.errors import TooManyConnections
from gateway.ingress.connections import (
    FALLBACK,
    KINDS,
    RULES,
    Guard,
    GuardedHandler,
    GuardedRunner,
    classify,
    raw_answer,
)
from gateway.observability.metrics import Metrics
from gateway.settings import LimitSettings

CANARY = b"CANARY-u41t"
HEAD = b"GET / HTTP/1.1\r\nHost: gw\r\n"
CASES = [
    (b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 1" + CANARY + b"\r\n\r\n",
     "bad_content_length"),
    (HEAD + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", "bad_content_length"),
    (HEAD + b"Content-Length: 99999999999999999999999\r\n\r\n", "content_length_too_large"),
    (HEAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     "content_length_with_transfer_encoding"),
    (b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: " + CANARY + b"\r\n\r\n",
     "unsupported_transfer_coding"),
    (HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n", "bad_transfer_encoding"),
    (HEAD + b"X-A: a\r\n " + CANARY + b"\r\n\r\n", "obs_fold"),
    (HEAD + b"X-A: " + b"a" * 20000 + b"\r\n\r\n", "header_too_large"),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", "header_too_large"),
    (HEAD + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", "too_many_headers"),
    (HEAD + b"X-A: a\x00" + CANARY + b"\r\n\r\n", "bad_header"),
    (HEAD + b"X(A: 1\r\n\r\n", "bad_header"),
    (b"GET /\x00 HTTP/1.1\r\nHost: gw\r\n\r\n", "bad_target"),
    (CANARY + b"\r\n\r\n", "bad_method"),
    (b"GET / HTTP/9.x\r\nHost: gw\r\n\r\n", "bad_request_line"),
    (b"\x16\x03\x01\x02\x00\x01\r\n\r\n", "tls_on_plain_port"),
    (b"GET / HTTP/1.1\r\n\r\n", "missing_host"),
    (HEAD + b"Host: again\r\n\r\n", "duplicate_header"),
    (b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
     "bad_chunked_body"),
]


async def _parse_error(parser_class: type, raw: bytes) -> HttpProcessingError:
    loop = asyncio.get_running_loop()
    parser = parser_class(BaseProtocol(loop), loop, 2**16, max_line_size=16384,
                          max_field_size=16384)
    with pytest.raises(HttpProcessingError) as caught:
        parser.feed_data(raw)
    return caught.value


@pytest.mark.parametrize(("raw", "kind"), CASES)
def test_the_parser_in_use_gets_each_kind(raw: bytes, kind: str) -> None:
    """Pinned to the C parser's (llhttp's) messages: the one aiohttp serves with here."""
    assert HttpRequestParser is not HttpRequestParserPy, "aiohttp's C parser did not load"
    assert classify(asyncio.run(_parse_error(HttpRequestParser, raw))).kind == kind


@pytest.mark.parametrize(("raw", "_kind"), CASES)
def test_the_python_parser_is_refused_too(raw: bytes, _kind: str) -> None:
    """aiohttp's pure-Python parser (AIOHTTP_NO_EXTENSIONS) words its errors otherwise: each
    is still one of our kinds, with our fixed message."""
    try:
        error = asyncio.run(_parse_error(HttpRequestParserPy, raw))
    except pytest.fail.Exception:
        return  # the Python parser accepts this one: aiohttp then answers it as a request
    rule = classify(error)
    assert rule.kind in KINDS
    assert CANARY.decode() not in rule.error.message


def test_every_kind_has_its_own_fixed_message() -> None:
    rules = (*RULES, FALLBACK)
    assert len(KINDS) == len(rules)
    assert len({rule.error.message for rule in rules}) == len(rules)
    for rule in rules:
        assert rule.error.code == rule.kind
        assert rule.error.error_type == "invalid_request_error"


def test_the_caps_count_per_worker_and_per_client() -> None:
    metrics = Metrics()
    guard = Guard(LimitSettings(max_connections=3, max_connections_per_client=2), metrics)
    assert guard.admit("10.0.0.1") is None
    assert guard.admit("10.0.0.1") is None
    assert guard.admit("10.0.0.1") == "max_connections_per_client"
    assert guard.admit("10.0.0.2") is None
    assert guard.admit("10.0.0.3") == "max_connections"
    assert metrics.connections_now == 3
    guard.release("10.0.0.1")
    guard.release("10.0.0.2")
    assert guard.admit("10.0.0.3") is None
    assert dict(guard.per_client) == {"10.0.0.1": 1, "10.0.0.3": 1}  # no empty entries kept


def test_the_raw_refusal_is_a_whole_json_response() -> None:
    head, _, body = raw_answer(TooManyConnections()).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Connection"] == "close"
    assert headers["Retry-After"] == "1"
    error = json.loads(body)["error"]
    assert error["code"] == "too_many_connections"
    assert error["request_id"] == headers["X-Request-ID"]


# --- aiohttp's private API, as connections.py uses it --------------------------------------

def test_request_handler_still_has_the_state_we_read() -> None:
    slots = set(RequestHandler.__slots__)
    assert {"_request_count", "_messages", "_request_in_progress", "_close",
            "_force_close", "_keepalive_timeout"} <= slots
    assert callable(RequestHandler._process_keepalive)
    assert list(inspect.signature(RequestHandler.handle_error).parameters) == \
        ["self", "request", "status", "exc", "message"]
    assert list(inspect.signature(RequestHandler.__init__).parameters)[:2] == \
        ["self", "manager"]
    # log_access marks the end of every response, logged or not
    assert "self.log_access(request, resp" in inspect.getsource(RequestHandler.finish_response)
    assert "if self._logging_enabled" in inspect.getsource(RequestHandler.log_access)


def test_server_and_runner_still_have_what_we_copy() -> None:
    async def check() -> None:
        app = web.Application()
        guard = Guard(LimitSettings(), Metrics())
        runner = GuardedRunner(app, guard, keepalive_timeout=7.0, max_line_size=2048)
        await runner.setup()
        try:
            server = runner.server
            assert type(server).__name__ == "GuardedServer"
            assert server is not None  # for mypy
            handler = server()
            assert isinstance(handler, GuardedHandler)
            assert handler.keepalive_timeout == 7.0
            assert handler.max_line_size == 2048
            assert not handler.busy
        finally:
            await runner.cleanup()

    assert callable(web.AppRunner._make_server)
    asyncio.run(check())
