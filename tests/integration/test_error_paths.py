"""Error paths over raw HTTP: every answer is the OpenAI envelope with a request id, names the
field at fault, and never echoes the body back."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx2 as httpx
import pytest

from tests.conftest import Demo
from tests.servers import TEST_KEY, ServerThread, demo_backend, gateway_for, settings_for

AUTH = {"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"}
CANARY = "CANARY-7f3a9c"


def post(gw: ServerThread, body: bytes | dict[str, object], headers: dict[str, str] | None = None,
         path: str = "/v1/chat/completions") -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return httpx.post(gw.url + path, content=content, headers=AUTH if headers is None else headers)


def assert_envelope(r: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["request_id"] == r.headers["X-Request-ID"]
    assert {"message", "type", "param", "code"} <= error.keys()
    if code:
        assert error["code"] == code
    assert CANARY not in r.text
    return error


def test_missing_and_wrong_key_401(gateway: ServerThread) -> None:
    assert_envelope(post(gateway, {"model": "x"}, headers={}), 401, "invalid_api_key")
    assert_envelope(post(gateway, {"model": "x"}, headers={"Authorization": "Bearer nope"}), 401)
    assert_envelope(post(gateway, {"model": "x"}, headers={"Authorization": TEST_KEY}), 401)


def test_x_api_key_header_is_accepted(gateway: ServerThread) -> None:
    r = post(gateway, {"model": "test-model", "messages": [{"role": "user", "content": "a"}]},
             headers={"x-api-key": TEST_KEY, "Content-Type": "application/json"})
    assert r.status_code == 200


@pytest.mark.parametrize(("raw", "code", "fragment"), [
    (b'{"model": "test-model", "messages": [' + CANARY.encode(), "invalid_json", "line 1"),
    (b'{"model": "' + CANARY.encode() + b'\xff\xfe"}', "invalid_encoding", "UTF-8"),
    (b'["' + CANARY.encode() + b'"]', "invalid_json", "JSON object"),
    (b'{"model": NaN}', "invalid_json", "line 1 column 11"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json", None),
    (b"", "invalid_request", "empty"),
])
def test_malformed_bodies_400_without_echo(gateway: ServerThread, raw: bytes, code: str,
                                           fragment: str | None) -> None:
    error = assert_envelope(post(gateway, raw), 400, code)
    if fragment:
        assert fragment in str(error["message"])


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": []}, "model"),
    ({"model": 7, "messages": []}, "model"),
    ({"model": "test-model"}, "messages"),
    ({"model": "test-model", "messages": "hi " + CANARY}, "messages"),
    ({"model": "test-model", "messages": [CANARY]}, "messages[0]"),
    ({"model": "test-model", "messages": [{"role": 1, "content": "x"}]}, "messages[0].role"),
    ({"model": "test-model", "messages": [{"role": [], "content": "x"}]}, "messages[0].role"),
    ({"model": "test-model", "messages": [{"content": "x"}]}, "messages[0].role"),
    ({"model": "test-model", "messages": [{"role": "user", "content": "x"},
                                          {"role": "wizard", "content": "x"}]},
     "messages[1].role"),
    ({"model": "test-model", "messages": [{"role": "user", "content": "x", "tool_calls": 3}]},
     "messages[0].tool_calls"),
    ({"model": "test-model", "messages": [{"role": "user", "content": 5}]},
     "messages[0].content"),
    ({"model": "test-model", "messages": [{"role": "user", "content": [{"text": CANARY}]}]},
     "messages[0].content[0].type"),
    ({"model": "test-model", "stream": "yes", "messages": [{"role": "user", "content": "x"}]},
     "stream"),
])
def test_wrong_types_name_the_field(gateway: ServerThread, body: dict[str, object],
                                    param: str) -> None:
    error = assert_envelope(post(gateway, body), 400)
    assert error["param"] == param


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"model": "test-model"}, "prompt"),
    ("/v1/completions", {"model": "test-model", "prompt": {"a": 1}}, "prompt"),
    ("/v1/embeddings", {"model": "test-model", "input": 3}, "input"),
    ("/v1/responses", {"model": "test-model", "input": [1]}, "input[0]"),
    ("/v1/messages", {"model": "test-model", "messages": [{"role": "user", "content": "x"}]},
     "max_tokens"),
    ("/v1/messages", {"model": "test-model", "max_tokens": 5, "system": 3,
                      "messages": [{"role": "user", "content": "x"}]}, "system"),
])
def test_other_endpoints_validate(gateway: ServerThread, path: str, body: dict[str, object],
                                  param: str) -> None:
    r = post(gateway, body, path=path)
    assert_envelope(r, 400)
    assert r.json()["error"]["param"] == param
    if path == "/v1/messages":
        assert r.json()["type"] == "error"  # Anthropic SDKs read this shape


def test_body_over_limit_413(demo: Demo) -> None:
    settings = settings_for([demo_backend("d", demo.url)], limits={"max_body_bytes": 1000})
    with gateway_for(settings) as gw:
        big = {"model": "test-model", "messages": [{"role": "user", "content": CANARY * 200}]}
        assert_envelope(post(gw, big), 413, "request_too_large")

        def chunked() -> Iterator[bytes]:  # no Content-Length: counted while reading
            yield json.dumps(big).encode()

        r = httpx.post(gw.url + "/v1/chat/completions", content=chunked(), headers=AUTH)
        assert_envelope(r, 413)
    assert demo.state.last_body is None  # nothing was forwarded


def test_rate_limit_429_with_retry_after(demo: Demo) -> None:
    settings = settings_for([demo_backend("d", demo.url)],
                            default_rate_limit={"requests_per_second": 0.1, "burst": 2})
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}]}
    with gateway_for(settings) as gw:
        assert post(gw, body).status_code == 200
        assert post(gw, body).status_code == 200
        r = post(gw, body)
        assert_envelope(r, 429, "rate_limit_exceeded")
        assert 1 <= int(r.headers["Retry-After"]) <= 10
        metrics = httpx.get(gw.url + "/metrics").text
    assert 'veil_rate_limited_total{tenant="test"} 1.0' in metrics


def test_unknown_path_and_method(gateway: ServerThread) -> None:
    error = assert_envelope(httpx.get(gateway.url + "/v1/nothing-here", headers=AUTH), 404,
                            "unknown_url")
    assert "/v1/nothing-here" in str(error["message"])
    assert_envelope(httpx.get(gateway.url + "/v1/chat/completions", headers=AUTH), 405)


def test_unknown_model_404_without_echo(gateway: ServerThread) -> None:
    error = assert_envelope(post(gateway, {"model": CANARY, "messages": [
        {"role": "user", "content": "x"}]}), 404, "model_not_found")
    assert error["param"] == "model"


def test_request_id_echoed_or_generated(gateway: ServerThread) -> None:
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}]}
    r = post(gateway, body, headers={**AUTH, "X-Request-ID": "trace-123"})
    assert r.headers["X-Request-ID"] == "trace-123"
    r = post(gateway, body, headers={**AUTH, "X-Request-ID": "bad id\twith spaces"})
    assert r.headers["X-Request-ID"].startswith("req_")
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers=AUTH,
                      json={**body, "stream": True}) as s:
        assert s.headers["X-Request-ID"].startswith("req_")


def test_client_cannot_choose_the_upstream(gateway: ServerThread, demo: Demo) -> None:
    """Absolute-form targets, Host and forwarding headers do not move traffic elsewhere."""
    body = json.dumps({"model": "test-model",
                       "messages": [{"role": "user", "content": "where"}]}).encode()
    request = (f"POST http://169.254.169.254/v1/chat/completions HTTP/1.1\r\n"
               f"Host: 169.254.169.254\r\nAuthorization: Bearer {TEST_KEY}\r\n"
               f"X-Forwarded-Host: evil.example\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert demo.state.last_body["messages"][0]["content"] == "where"  # it went to the demo


def test_health_ready_metrics_need_no_key(gateway: ServerThread) -> None:
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(gateway.url + "/readyz").status_code == 200
    post(gateway, {"model": "test-model", "messages": [{"role": "user", "content": CANARY}]})
    metrics = httpx.get(gateway.url + "/metrics")
    assert metrics.status_code == 200
    assert 'veil_requests_total{route="chat_completions",status="200"}' in metrics.text
    assert CANARY not in metrics.text


def test_upstream_refusing_gateway_credential_is_502_not_401(demo: Demo) -> None:
    settings = settings_for([demo_backend("d", demo.url)])
    with gateway_for(settings, {"DEMO_KEY": "a-wrong-upstream-secret"}) as gw:
        r = post(gw, {"model": "test-model", "messages": [{"role": "user", "content": "x"}]})
    assert_envelope(r, 502, "upstream_auth_failed")


def test_secret_looking_request_id_is_replaced(gateway: ServerThread) -> None:
    key = "sk-proj-Zx8Qw3Er5Ty7Ui9Op1As2Df4Gh6Jk8Lz0Xc"
    r = post(gateway, {"model": "test-model", "messages": [{"role": "user", "content": "x"}]},
             headers={**AUTH, "X-Request-ID": key})
    assert r.headers["X-Request-ID"].startswith("req_")


def nested(depth: int) -> str:
    """JSON text `depth` containers deep (objects and arrays in turn), written out directly:
    Python's own encoder gives up near 1,000 levels."""
    opening = "".join('{"k":' if i % 2 == 0 else "[" for i in range(depth))
    closing = "".join("}" if i % 2 == 0 else "]" for i in reversed(range(depth)))
    return opening + '"x"' + closing


@pytest.mark.parametrize("depth", [65, 256, 1000])
@pytest.mark.parametrize("place", ["metadata", "tool_parameters", "unknown_field",
                                   "response_format"])
def test_deep_nesting_is_refused_at_parse_time_naming_the_limit(
        gateway: ServerThread, place: str, depth: int) -> None:
    deep = nested(depth)
    where = {
        "metadata": f'"metadata": {{"k": {deep}}}',
        "tool_parameters": f'"tools": [{{"type": "function", "function": {{"name": "f", '
                           f'"parameters": {deep}}}}}]',
        "response_format": f'"response_format": {{"type": "json_schema", "json_schema": '
                           f'{{"name": "s", "schema": {deep}}}}}',
        "unknown_field": f'"extra_thing": {deep}',
    }[place]
    raw = ('{"model": "test-model", "messages": [{"role": "user", "content": "hi"}], '
           + where + "}")
    r = post(gateway, raw.encode())
    error = assert_envelope(r, 400, "too_deep")
    assert "64 levels" in str(error["message"])


def test_nesting_within_the_limit_is_accepted(gateway: ServerThread) -> None:
    raw = ('{"model": "test-model", "messages": [{"role": "user", "content": "hi"}], '
           f'"metadata": {{"k": "v"}}, "extra_thing": {nested(40)}}}')
    assert post(gateway, raw.encode()).status_code == 200


def test_server_header_names_no_versions(gateway: ServerThread) -> None:
    answers = [httpx.get(gateway.url + "/healthz"), httpx.get(gateway.url + "/nope"),
               post(gateway, b"{bad"), post(gateway, {"model": "test-model", "messages": [
                   {"role": "user", "content": "hi"}]})]
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers=AUTH, json={
            "model": "test-model", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}) as streamed:
        answers.append(streamed)
    for answer in answers:
        assert answer.headers["Server"] == "veil"


CHAT = {"model": "test-model", "messages": [{"role": "user", "content": CANARY}]}


@pytest.mark.parametrize("content_type", [None, "text/plain",
                                          "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonp"])
def test_a_body_not_declared_json_is_415(gateway: ServerThread, content_type: str | None
                                         ) -> None:
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    assert_envelope(post(gateway, CHAT, headers=headers), 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.api+json"])
def test_json_content_types_are_accepted(gateway: ServerThread, content_type: str) -> None:
    headers = {"Authorization": f"Bearer {TEST_KEY}", "Content-Type": content_type}
    assert post(gateway, CHAT, headers=headers).status_code == 200
