"""Hostile clients at the connection level, over raw sockets against a real gateway: slow and
idle connections are closed in time, connection caps answer 503, bytes that are not HTTP get
the JSON envelope without an echo, and SIGTERM drains streams before the worker exits."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from gateway.demo.upstream import build_demo_app
from tests.conftest import Demo
from tests.integration.test_cli_serve import ROOT, free_port, write_config
from tests.servers import TEST_KEY, ServerThread, demo_backend, gateway_for, settings_for

CANARY = "CANARY-c0nn-5e1f"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"


@contextmanager
def guarded(demo: Demo, **limits: Any) -> Iterator[ServerThread]:
    """A gateway in front of the demo server with these `limits`."""
    with gateway_for(settings_for([demo_backend("d", demo.url)], limits=limits)) as gateway:
        yield gateway


def connect(gateway: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length framed): status, headers (lower-cased names), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed before the whole body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closed `sock` (None: still open after `seconds`), sending
    `trickle` one byte every 0.25 s meanwhile, as a slowloris does."""
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        if select.select([sock], [], [], 0.25)[0]:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - started
            except ConnectionResetError:
                return time.monotonic() - started
        if sent < len(trickle):
            try:
                sock.send(trickle[sent:sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started
            sent += 1
    return None


def metric(gateway: ServerThread, name: str) -> float:
    """A sample of the gateway's /metrics page (`name` with its labels); 0 when absent."""
    text = httpx.get(gateway.url + "/metrics", headers={"Connection": "close"}).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def closed_for(reason: str) -> str:
    return f'veil_connections_closed_total{{reason="{reason}"}}'


# --- timeouts --------------------------------------------------------------------------------

def test_slowloris_first_head_is_cut_at_the_header_timeout(demo: Demo) -> None:
    with guarded(demo, header_timeout_s=1.0, idle_timeout_s=30.0) as gateway:
        trickle = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n" + b"X-Slow: " + b"a" * 100
        with connect(gateway) as sock:
            elapsed = closed_within(sock, 6, trickle)
        assert elapsed is not None, "a slowloris head was still open after 6 s"
        assert 0.8 <= elapsed <= 3.0, elapsed
        assert metric(gateway, closed_for("header_timeout")) == 1


def test_a_silent_connection_is_cut_at_the_header_timeout(demo: Demo) -> None:
    with guarded(demo, header_timeout_s=1.0, idle_timeout_s=30.0) as gateway, \
            connect(gateway) as sock:
        elapsed = closed_within(sock, 6)
        assert elapsed is not None, "a silent connection was still open after 6 s"
        assert 0.8 <= elapsed <= 3.0, elapsed


def test_a_later_head_on_a_keep_alive_connection_is_timed_too(demo: Demo) -> None:
    with guarded(demo, header_timeout_s=1.0, idle_timeout_s=30.0) as gateway:
        with connect(gateway) as sock:
            sock.sendall(HEALTHZ)
            assert read_response(sock)[0] == 200
            time.sleep(1.5)  # idle longer than the header timeout: idle is not a head
            started = time.monotonic()
            elapsed = closed_within(sock, 6, b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: " +
                                    b"a" * 100)
            assert elapsed is not None, "a slow second head was still open after 6 s"
            assert time.monotonic() - started <= 3.0
        assert metric(gateway, closed_for("header_timeout")) == 1


def test_heads_that_arrive_in_time_are_served_on_one_connection(demo: Demo) -> None:
    with guarded(demo, header_timeout_s=1.0, idle_timeout_s=30.0) as gateway, \
            connect(gateway) as sock:
        for _ in range(3):  # every head in pieces, each well within the timeout
            for piece in (HEALTHZ[:10], HEALTHZ[10:25], HEALTHZ[25:]):
                sock.sendall(piece)
                time.sleep(0.2)
            assert read_response(sock)[0] == 200
            time.sleep(0.6)  # 3 x (0.6 + 0.6) s on the connection: longer than the timeout


def test_a_slow_body_is_not_a_slow_head(demo: Demo) -> None:
    """Body bytes arriving for longer than the header timeout are the body's business
    (body_read_timeout_s), before and after which the connection stays usable."""
    body = json.dumps({"model": "test-model",
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer " + TEST_KEY.encode() +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with guarded(demo, header_timeout_s=1.0, idle_timeout_s=30.0) as gateway:
        with connect(gateway) as sock:
            for _ in range(2):
                sock.sendall(head)
                for i in range(0, len(body), len(body) // 6 + 1):  # over ~2 s
                    time.sleep(0.3)
                    sock.sendall(body[i:i + len(body) // 6 + 1])
                assert read_response(sock)[0] == 200
                time.sleep(1.3)  # idle past the header timeout: no timer a body byte started
        assert metric(gateway, closed_for("header_timeout")) == 0


def test_an_idle_keep_alive_connection_is_closed(demo: Demo) -> None:
    with guarded(demo, header_timeout_s=30.0, idle_timeout_s=1.0) as gateway:
        with connect(gateway) as sock:
            sock.sendall(HEALTHZ)
            status, headers, _ = read_response(sock)
            assert status == 200
            assert headers.get("connection", "").lower() != "close"
            elapsed = closed_within(sock, 6)
            assert elapsed is not None, "an idle connection was still open after 6 s"
            assert 0.7 <= elapsed <= 3.0, elapsed
        assert metric(gateway, closed_for("idle_timeout")) == 1


# --- caps --------------------------------------------------------------------------------------

def assert_too_many(sock: socket.socket) -> None:
    sock.sendall(HEALTHZ)
    status, headers, body = read_response(sock)
    assert status == 503
    assert headers["connection"].lower() == "close"
    assert headers["retry-after"] == "1"
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "too_many_connections"
    assert error["type"] == "service_unavailable"
    assert error["request_id"] == headers["x-request-id"]
    assert read_all(sock) == b""  # and closed


@pytest.mark.parametrize(("limits", "reason"), [
    ({"max_connections_per_client": 2}, "max_connections_per_client"),
    ({"max_connections": 2}, "max_connections"),
])
def test_connections_over_a_cap_get_503_and_are_closed(demo: Demo, limits: dict[str, int],
                                                       reason: str) -> None:
    with guarded(demo, **limits) as gateway:
        held = [connect(gateway), connect(gateway)]
        for sock in held:  # answered: accepted and counted by the gateway
            sock.sendall(HEALTHZ)
            assert read_response(sock)[0] == 200
        with connect(gateway) as third:
            assert_too_many(third)
        held.pop().close()  # a place frees up ...
        deadline = time.monotonic() + 5
        while True:
            with connect(gateway) as sock:
                sock.sendall(HEALTHZ)
                if read_response(sock)[0] == 200:
                    break  # ... and is taken
            assert time.monotonic() < deadline, "a closed connection was never released"
            time.sleep(0.1)
        held.pop().close()
        deadline = time.monotonic() + 5
        while metric(gateway, "veil_connections_open") != 1:  # the /metrics request's own
            assert time.monotonic() < deadline, "the open-connections gauge did not fall"
            time.sleep(0.1)
        assert metric(gateway, closed_for(reason)) >= 1


# --- protocol errors ---------------------------------------------------------------------------

C = CANARY
BAD_REQUESTS = [
    ("bad_content_length", f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
     f"Content-Length: 1{C}\r\n\r\n", 400),
    ("bad_content_length", f"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\n"
     f"Content-Length: 2\r\nX-C: {C}\r\n\r\nab", 400),
    ("content_length_too_large", f"POST / HTTP/1.1\r\nHost: gw\r\n"
     f"Content-Length: 99999999999999999999999\r\nX-C: {C}\r\n\r\n", 413),
    ("content_length_with_transfer_encoding", f"POST / HTTP/1.1\r\nHost: gw\r\n"
     f"Content-Length: 3\r\nTransfer-Encoding: chunked\r\nX-C: {C}\r\n\r\n0\r\n\r\n", 400),
    ("unsupported_transfer_coding", f"POST / HTTP/1.1\r\nHost: gw\r\n"
     f"Transfer-Encoding: {C}\r\n\r\n", 501),
    ("bad_transfer_encoding", f"POST / HTTP/1.1\r\nHost: gw\r\n"
     f"Transfer-Encoding: chunked, gzip\r\nX-C: {C}\r\n\r\n", 400),
    ("obs_fold", f"GET / HTTP/1.1\r\nHost: gw\r\nX-A: a\r\n {C}\r\n\r\n", 400),
    ("obs_fold", f"GET / HTTP/1.1\r\nHost: gw\r\nX-A: a\r\n\t{C}\r\n\r\n", 400),
    ("header_too_large", f"GET / HTTP/1.1\r\nHost: gw\r\nX-A: {C}{'a' * 20000}\r\n\r\n", 431),
    ("header_too_large", f"GET / HTTP/1.1\r\nHost: gw\r\nX{C}{'a' * 20000}: 1\r\n\r\n", 431),
    ("header_too_large", f"GET /{C}{'a' * 20000} HTTP/1.1\r\nHost: gw\r\n\r\n", 431),
    ("too_many_headers", "GET / HTTP/1.1\r\nHost: gw\r\n" +
     "".join(f"X-{i}: {C}\r\n" for i in range(200)) + "\r\n", 431),
    ("bad_header", f"GET / HTTP/1.1\r\nHost: gw\r\nX-A: a\x00{C}\r\n\r\n", 400),
    ("bad_header", f"GET / HTTP/1.1\r\nHost: gw\r\nX\x00{C}: a\r\n\r\n", 400),
    ("bad_header", f"GET / HTTP/1.1\r\nHost: gw\r\nX-A : {C}\r\n\r\n", 400),
    ("bad_header", f"GET / HTTP/1.1\r\nHost: gw\r\nX-A: a\x01{C}\r\n\r\n", 400),
    ("bad_header", f"GET / HTTP/1.1\r\nHost: gw\rX-A: {C}\r\n\r\n", 400),
    ("bad_target", f"GET /\x00{C} HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
    ("bad_method", f"{C}\r\n\r\n", 400),
    ("bad_method", f"G{C}T / HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
    ("bad_request_line", f"GET / HTTP/9.{C}\r\nHost: gw\r\n\r\n", 400),
    ("bad_request_line", f"GET / HTTP/1.1\nHost: gw\nX-A: {C}\n\n", 400),
    ("tls_on_plain_port", f"\x16\x03\x01\x02\x00\x01{C}\r\n\r\n", 400),
    ("missing_host", f"GET /{C} HTTP/1.1\r\n\r\n", 400),
    ("duplicate_header", f"GET /{C} HTTP/1.1\r\nHost: gw\r\nHost: {C}\r\n\r\n", 400),
    ("bad_chunked_body", f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
     f"Transfer-Encoding: chunked\r\n\r\nZZ{C}\r\n", 400),
]


@pytest.fixture(scope="module")
def module_gateway() -> Iterator[ServerThread]:
    with ServerThread(build_demo_app()) as upstream, \
            gateway_for(settings_for([demo_backend("d", upstream.url)])) as gateway:
        yield gateway


@pytest.mark.parametrize(("kind", "raw", "status"), BAD_REQUESTS,
                         ids=[f"{i}-{kind}" for i, (kind, _, _) in enumerate(BAD_REQUESTS)])
def test_protocol_errors_are_json_envelopes_without_echo(module_gateway: ServerThread,
                                                          kind: str, raw: str,
                                                          status: int) -> None:
    with connect(module_gateway) as sock:
        sock.sendall(raw.encode("latin-1"))
        answer = read_all(sock)  # the whole answer, then the gateway closes
    assert CANARY.encode() not in answer
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    assert int(lines[0].split()[1]) == status, lines[0]
    assert headers["content-type"].startswith("application/json")
    assert headers["connection"].lower() == "close"
    assert headers["server"] == "veil"
    error = json.loads(body)["error"]
    assert error["code"] == kind
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert error["request_id"] == headers["x-request-id"]
    assert error["request_id"].startswith("req_")


def test_protocol_errors_are_counted_by_kind(module_gateway: ServerThread) -> None:
    name = 'veil_protocol_errors_total{kind="obs_fold"}'
    before = metric(module_gateway, name)
    with connect(module_gateway) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: a\r\n folded\r\n\r\n")
        read_all(sock)
    assert metric(module_gateway, name) == before + 1


# --- graceful shutdown -------------------------------------------------------------------------

@contextmanager
def veil_serve(tmp_path: Path, chunk_delay_ms: float,
               shutdown_timeout_s: float) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """`veil serve` (one worker) in front of a demo server that streams slowly."""
    with ServerThread(build_demo_app(chunk_delay_ms=chunk_delay_ms)) as upstream:
        port = free_port()
        config = write_config(tmp_path / "config.yaml", upstream.url, port)
        config.write_text(config.read_text() +
                          f"limits: {{shutdown_timeout_s: {shutdown_timeout_s}}}\n")
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=ROOT, stderr=subprocess.PIPE, text=True,
            # One worker: metrics stay in the process (an empty PROMETHEUS_MULTIPROC_DIR
            # would have prometheus_client write its files into the working directory).
            env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, "veil serve exited during start-up"
                assert time.monotonic() < deadline, "veil serve never became ready"
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            yield port, process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def start_stream(port: int, words: int) -> socket.socket:
    """A streamed chat completion, read up to its first event."""
    body = json.dumps({"model": "m", "stream": True, "messages": [
        {"role": "user", "content": " ".join(["word"] * words)}]}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
                 b"Content-Type: application/json\r\n"
                 b"Authorization: Bearer " + TEST_KEY.encode() + b"\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    while b"data: " not in data:
        chunk = sock.recv(65536)
        assert chunk, "the stream ended before its first event"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    return sock


def refused_soon(port: int, seconds: float = 3) -> bool:
    """A new connection is refused (the listening socket is closed) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError):  # reset: the listener closed
            return True  # with the handshake in its queue; not accepted either way
        time.sleep(0.05)
    return False


def test_sigterm_lets_a_stream_finish_then_exits_0(tmp_path: Path) -> None:
    with veil_serve(tmp_path, chunk_delay_ms=150, shutdown_timeout_s=10) as (port, process):
        with start_stream(port, words=6) as stream:  # ~15 events, 150 ms apart: ~2 s
            process.send_signal(signal.SIGTERM)
            assert refused_soon(port), "new connections were still accepted while draining"
            rest = read_all(stream)
        assert b"data: [DONE]" in rest, rest[-300:]
        assert process.wait(timeout=10) == 0
        log = process.stderr.read() if process.stderr else ""
    events = [json.loads(line).get("event") for line in log.splitlines() if line.startswith("{")]
    assert events.index("stopping") < events.index("draining") < events.index("drained") \
        < events.index("stopped"), events
    assert next(json.loads(line) for line in log.splitlines()
                if '"draining"' in line)["in_flight"] == 1


def test_sigterm_cuts_a_stream_at_the_shutdown_timeout(tmp_path: Path) -> None:
    with veil_serve(tmp_path, chunk_delay_ms=300, shutdown_timeout_s=2) as (port, process):
        with start_stream(port, words=40) as stream:  # ~45 events, 300 ms apart: ~13 s
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            rest = read_all(stream)
            cut_after = time.monotonic() - signalled
        assert b"data: [DONE]" not in rest
        assert 1.5 < cut_after < 3.2, cut_after  # at the deadline, not twice it (aiohttp's)
        assert process.wait(timeout=5) == 0
        assert time.monotonic() - signalled < 5
        log = process.stderr.read() if process.stderr else ""
    events = {record.get("event"): record for record in
              (json.loads(line) for line in log.splitlines() if line.startswith("{"))}
    assert events["drain_deadline"]["cut"] == 1
    assert events["drained"]["cut"] == 1
    assert "stopped" in events
