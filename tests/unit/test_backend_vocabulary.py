"""A backend's own vocabulary in config (upstream_models, headers, azure-openai), where each
request goes on it, and which of its reply headers a client sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from gateway.api import openai
from gateway.api.endpoint import ApiRequest
from gateway.api.model_name import rename, renamed_body, renaming, with_data
from gateway.api.replies import checked
from gateway.api.sse import SSEEvent
from gateway.proxy.reply_headers import MAX_RELAYED, reply_headers
from gateway.proxy.target import probe_path, upstream_path, upstream_payload
from gateway.proxy.upstream import upstream_headers
from gateway.settings import BackendSettings, HealthCheck, load_settings
from tests.unit.test_settings import GOOD, errors, write

BACKEND_LINE = "    url: http://127.0.0.1:1234/"


def with_backend(extra: str, models: str = "  m: [up]") -> str:
    return GOOD.replace(BACKEND_LINE, BACKEND_LINE + extra).replace("  m: [up]", models)


HEADERS = "\n    headers:\n      OpenAI-Organization: {env: ORG}\n      X-Team: {value: search}"


def test_a_missing_header_variable_is_a_config_error_naming_it(tmp_path: Path) -> None:
    assert errors(tmp_path, with_backend(HEADERS)) == [
        f"{tmp_path}/config.yaml:13:34: backends[0].headers.OpenAI-Organization.env: "
        "environment variable ORG is not set or empty"]
    settings = load_settings(write(tmp_path, with_backend(HEADERS)), {"ORG": "org-1"})
    sent = upstream_headers(settings.backends[0], {"ORG": "org-1"})
    assert (sent["OpenAI-Organization"], sent["X-Team"]) == ("org-1", "search")


def test_a_header_variable_that_cannot_be_a_header_value_is_refused_unquoted(
        tmp_path: Path) -> None:
    problems = errors(tmp_path, with_backend(HEADERS), {"ORG": "two\nlines"})
    assert problems[0].endswith("environment variable ORG must be printable ASCII without "
                                "blanks at either end (it is a header value)")
    assert "two" not in problems[0]


@pytest.mark.parametrize(("headers", "expected"), [
    ("{Authorization: {value: x}}", "'Authorization' is set by the gateway itself"),
    ("{x-api-key: {env: K}}", "'x-api-key' is set by the gateway itself"),
    ("{Host: {value: x}}", "'Host' is set by the gateway itself"),
    ("{Content-Length: {value: '1'}}", "'Content-Length' is set by the gateway itself"),
    ("{anthropic-beta: {value: x}}", "'anthropic-beta' is set by the gateway itself"),
    ("{Connection: {value: close}}", "'Connection' is a hop-by-hop header"),
    ("{Transfer-Encoding: {value: chunked}}", "'Transfer-Encoding' is a hop-by-hop header"),
    ("{'Bad Name': {value: x}}", "'Bad Name' is not a header name"),
    ("{X-A: {value: x}, x-a: {value: y}}", "'X-A' is given twice"),
    ("{X-A: {env: A, value: x}}", "give exactly one of env"),
    ("{X-A: {}}", "give exactly one of env"),
    ("{X-A: {value: ' padded'}}", "value must be printable ASCII"),
])
def test_header_names_and_values_are_checked(tmp_path: Path, headers: str,
                                             expected: str) -> None:
    found = errors(tmp_path, with_backend(f"\n    headers: {headers}"))
    assert any(expected in e for e in found), found


@pytest.mark.parametrize(("extra", "models", "expected"), [
    ("\n    upstream_models: {nope: x}", "  m: [up]",
     "backends[0].upstream_models.nope: 'nope' is not in models"),
    ("\n    upstream_models: {m: x}", "  m: [up]\n  n: [up]", None),
    ("\n    upstream_models: {m: 'has space'}", "  m: [up]", "an upstream model name is"),
    ("\n    format: azure-openai", "  m: [up]", "format: azure-openai needs api_version"),
    ("\n    format: azure-openai\n    api_version: latest", "  m: [up]",
     "format: azure-openai needs api_version"),
    ("\n    api_version: 2024-10-21", "  m: [up]", "api_version is for format: azure-openai"),
    ("\n    format: azure-openai\n    api_version: 2024-10-21\n"
     "    upstream_models: {m: org/deploy}", "  m: [up]", "an Azure deployment name is"),
    ("\n    format: azure-openai\n    api_version: 2024-10-21", "  org/model: [up]",
     "models.org/model: azure-openai backend 'up' needs upstream_models.org/model"),
])
def test_model_mappings_and_azure_settings_are_checked(tmp_path: Path, extra: str,
                                                       models: str, expected: str | None
                                                       ) -> None:
    text = with_backend(extra, models)
    if expected is None:
        assert load_settings(write(tmp_path, text), {}).backends[0].upstream_model("m") == "x"
        return
    found = errors(tmp_path, text)
    assert any(expected in e for e in found), found


def test_a_mapping_for_a_model_this_backend_does_not_serve_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace("  - name: up", "  - name: other\n    url: http://127.0.0.1:1/\n"
                        "  - name: up") \
        .replace(BACKEND_LINE, BACKEND_LINE + "\n    upstream_models: {m: x}") \
        .replace("  m: [up]", "  m: [other]")
    found = errors(tmp_path, text)
    assert any("models.m does not list backend 'up'" in e for e in found), found


def azure(**extra: Any) -> BackendSettings:
    return BackendSettings.model_validate({
        "name": "az", "url": "https://res.openai.azure.com", "format": "azure-openai",
        "api_version": "2025-04-01-preview", "upstream_models": {"m": "dep-1"}, **extra})


def request(endpoint: Any, body: dict[str, Any], model: str = "m") -> ApiRequest:
    return ApiRequest(endpoint, model, False, body)


def test_azure_paths() -> None:
    backend = azure()
    version = "?api-version=2025-04-01-preview"
    assert upstream_path(backend, "/v1/chat/completions", "m") == \
        "/openai/deployments/dep-1/chat/completions" + version
    assert upstream_path(backend, "/v1/embeddings", "unmapped") == \
        "/openai/deployments/unmapped/embeddings" + version
    assert upstream_path(backend, "/v1/responses", "m") == "/openai/v1/responses"
    assert upstream_path(backend, "/v1/responses/resp_1?include=x", "") == \
        "/openai/v1/responses/resp_1?include=x"
    assert upstream_path(backend, "/v1/conversations", "m") == "/openai/v1/conversations"
    plain = BackendSettings(name="p", url="http://h", upstream_models={"m": "x"})
    assert upstream_path(plain, "/v1/chat/completions", "m") == "/v1/chat/completions"


def test_probe_paths() -> None:
    assert probe_path(azure(), HealthCheck()) == "/openai/models?api-version=2025-04-01-preview"
    assert probe_path(azure(), HealthCheck(path="/openai/v1/models")) == "/openai/v1/models"
    assert probe_path(BackendSettings(name="p", url="http://h"), HealthCheck()) == "/health"


def test_azure_sends_api_key_not_bearer() -> None:
    headers = upstream_headers(azure(api_key_env="K"), {"K": "secret"})
    assert headers["api-key"] == "secret"
    assert "Authorization" not in headers


def test_a_header_variable_gone_at_start_fails_the_start() -> None:
    backend = azure(headers={"X-Org": {"env": "ORG"}})
    with pytest.raises(RuntimeError, match="ORG"):
        upstream_headers(backend, {})


def test_only_the_model_differs_in_the_mapped_payload() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "<EMAIL_1>"}]}
    payload = orjson.dumps(body)
    mapped = upstream_payload(azure(), request(openai.CHAT, body), payload)
    assert mapped is not None
    assert orjson.loads(mapped) == {**body, "model": "dep-1"}
    assert body["model"] == "m"  # the request's own body is untouched (failover reuses it)
    unmapped = BackendSettings(name="p", url="http://h")
    assert upstream_payload(unmapped, request(openai.CHAT, body), payload) is payload


def test_a_conversation_names_no_model_and_goes_up_as_it_is() -> None:
    body = {"items": [{"type": "message", "role": "user", "content": "hi"}]}
    payload = orjson.dumps(body)
    assert upstream_payload(azure(), request(openai.CONVERSATIONS, body), payload) is payload


def test_rename_covers_each_place_a_reply_names_its_model() -> None:
    chunk = {"object": "chat.completion.chunk", "model": "dep-1", "choices": []}
    event = {"type": "response.created", "response": {"model": "dep-1", "output": []}}
    start = {"type": "message_start", "message": {"model": "claude-x", "content": []}}
    delta = {"type": "response.output_text.delta", "delta": "model"}
    for doc in (chunk, event, start):
        assert rename(doc, "m")
    assert (chunk["model"], event["response"]["model"], start["message"]["model"]) == \
        ("m", "m", "m")
    assert not rename(delta, "m")
    assert delta == {"type": "response.output_text.delta", "delta": "model"}
    assert orjson.loads(renamed_body(b'{"model": "dep-1", "n": 1}', "m")) == \
        {"model": "m", "n": 1}


def test_a_renamed_event_keeps_its_other_fields() -> None:
    event = SSEEvent(b'event: response.created\nid: 7\ndata: {"response": {"model": "d"}}\n')
    renamed = with_data(event, {"response": {"model": "m"}})
    assert renamed.event == "response.created"
    assert b"id: 7\n" in renamed.raw
    assert orjson.loads(renamed.data) == {"response": {"model": "m"}}
    out = renaming(checked, "m")(event)
    assert out == [renamed.encode()]


def test_reply_headers_take_the_first_of_a_repeated_header_and_cap_the_count() -> None:
    upstream = CIMultiDict([("x-request-id", "req_1"), ("x-request-id", "req_2"),
                            ("request-id", "req_anthropic")])
    assert reply_headers(upstream)["x-upstream-request-id"] == "req_anthropic"
    assert reply_headers(CIMultiDict([("X-Request-ID", "req_1"), ("x-request-id", "req_2")])) \
        == {"x-upstream-request-id": "req_1"}
    many = CIMultiDict((f"anthropic-ratelimit-u{chr(97 + i // 26)}{chr(97 + i % 26)}-limit",
                        "1") for i in range(100))
    assert len(reply_headers(many)) == MAX_RELAYED


@pytest.mark.parametrize(("name", "value", "relayed"), [
    ("x-ratelimit-reset-tokens", "1h2m3.5s", True),
    ("x-ratelimit-reset-tokens", "0.25", True),
    ("x-ratelimit-reset-tokens", "later", False),
    ("x-ratelimit-limit-tokens", "-1", False),
    ("anthropic-ratelimit-input-tokens-reset", "2026-01-01T00:00:00.5+01:00", True),
    ("anthropic-ratelimit-unified-reset", "1767225600", True),
    ("anthropic-ratelimit-unified-status", "allowed", False),  # not a name it relays
    ("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT", True),
    ("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT; why not", False),
    ("x-request-id", "a" * 129, False),
])
def test_reply_header_vocabulary(name: str, value: str, relayed: bool) -> None:
    assert bool(reply_headers(CIMultiDict({name: value}))) is relayed


def test_the_commented_azure_example_in_config_yaml_is_valid(tmp_path: Path) -> None:
    config = (Path(__file__).parents[2] / "config.yaml").read_text()
    start = config.index("  # - name: azure-eastus")
    block = config[start:config.index("\n\n", start)]
    uncommented = "\n".join(line.replace("  # ", "  ", 1) for line in block.splitlines())
    text = config.replace(block, uncommented).replace(
        "veil-demo: [demo-openai, demo-anthropic]",
        "veil-demo: [demo-openai, demo-anthropic, azure-eastus]")
    environ = {"AZURE_OPENAI_API_KEY": "k", "APIM_SUBSCRIPTION_KEY": "s"}
    settings = load_settings(write(tmp_path, text), environ)
    azure_backend = settings.backend("azure-eastus")
    assert azure_backend.wire == "openai"
    assert upstream_path(azure_backend, "/v1/chat/completions", "veil-demo") == \
        "/openai/deployments/gpt-4o-mini-prod/chat/completions?api-version=2024-10-21"
    assert upstream_headers(azure_backend, environ)["Ocp-Apim-Subscription-Key"] == "s"
