"""What a span may carry (gateway/observability/span_attributes.py), the W3C traceparent
parsing (trace_context.py), and the tracing settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from multidict import CIMultiDict
from opentelemetry import trace
from opentelemetry.trace import SpanContext, TraceFlags

from gateway.errors import ConfigError
from gateway.observability.span_attributes import allowed
from gateway.observability.trace_context import continued, traceparent
from gateway.settings import TracingSettings, load_settings, otlp_headers

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def test_known_keys_with_their_types_pass() -> None:
    attributes = {"veil.tenant": "acme", "gen_ai.request.model": "gpt-4o-2024-08-06",
                  "veil.rule": "actions.CREDIT_CARD=block", "http.route": "/v1/models/{id}",
                  "veil.policy": "sha256:" + "ab" * 32, "http.response.status_code": 200,
                  "veil.stream": True, "veil.entities.EMAIL": 2, "server.address": "10.0.0.7",
                  "veil.failed_open": ("detector", "evidence"),
                  "veil.request_id": "req_0123456789abcdef0123456789abcdef"}
    assert allowed(attributes) == attributes


@pytest.mark.parametrize(("key", "value"), [
    ("gen_ai.prompt", "hello"),  # not a key of ours
    ("gen_ai.input.messages", "[]"),
    ("veil.tenant", "alice@example.com"),  # a label has no '@'
    ("veil.tenant", "Marie Curie"),  # nor spaces
    ("gen_ai.response.model", "4111111111111111"),  # the detector finds a card
    ("gen_ai.response.model", "sk-abcdefghijklmnopqrstuvwxyz123456"),  # ... and a secret
    ("veil.backend", "x" * 200),  # too long for a name
    ("veil.tenant", 7),  # wrong types
    ("http.response.status_code", "200"),
    ("http.response.status_code", True),
    ("gen_ai.usage.input_tokens", -1),
    ("veil.stream", 1),
    ("veil.entities.email", 1),  # an entity type is upper case
    ("veil.entities.EMAIL", "alice@example.com"),
    ("veil.failed_open", ("detector", "a b")),
    ("veil.failed_open", "detector"),
    ("veil.request_id", "has space"),
    ("server.address", "host/with/path"),
])
def test_anything_else_is_dropped(key: str, value: object) -> None:
    assert allowed({key: value}) == {}


def test_none_is_left_out() -> None:
    assert allowed({"veil.tenant": None, "veil.backend": "b"}) == {"veil.backend": "b"}


def _context(value: str | list[str]) -> SpanContext | None:
    headers: CIMultiDict[str] = CIMultiDict()
    for v in [value] if isinstance(value, str) else value:
        headers.add("traceparent", v)
    found = continued(headers)
    return trace.get_current_span(found).get_span_context() if found is not None else None


def test_a_wellformed_traceparent_is_continued_as_a_remote_parent() -> None:
    parent = _context(f"00-{TRACE}-{SPAN}-01")
    assert parent is not None
    assert parent.is_remote
    assert (f"{parent.trace_id:032x}", f"{parent.span_id:016x}") == (TRACE, SPAN)
    assert parent.trace_flags.sampled
    assert not parent.trace_state
    unsampled = _context(f"00-{TRACE}-{SPAN}-fe")  # only the sampled bit is read
    assert unsampled is not None
    assert int(unsampled.trace_flags) == 0


@pytest.mark.parametrize("value", [
    "", "garbage", f"00-{TRACE}-{SPAN}", f"00-{TRACE}-{SPAN}-1", f"00-{TRACE.upper()}-{SPAN}-01",
    f"ff-{TRACE}-{SPAN}-01", f"01-{TRACE}-{SPAN}-01-xyz", f"00-{'0' * 32}-{SPAN}-01",
    f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE}-{SPAN}-01-", f"00_{TRACE}_{SPAN}_01",
    [f"00-{TRACE}-{SPAN}-01", f"00-{TRACE}-{SPAN}-01"],
])
def test_anything_else_starts_a_new_trace(value: str | list[str]) -> None:
    assert _context(value) is None


def test_the_outgoing_traceparent_is_written_from_the_ids() -> None:
    context = SpanContext(int(TRACE, 16), int(SPAN, 16), is_remote=False,
                          trace_flags=TraceFlags(1))
    assert traceparent(context) == f"00-{TRACE}-{SPAN}-01"
    assert traceparent(trace.INVALID_SPAN_CONTEXT) is None


def test_tracing_is_off_by_default() -> None:
    settings = TracingSettings()
    assert settings.enabled is False
    assert settings.endpoint == "http://127.0.0.1:4318/v1/traces"


def test_otlp_headers() -> None:
    assert otlp_headers("authorization=Bearer%20x, x-team = a=b") == {
        "authorization": "Bearer x", "x-team": "a=b"}
    with pytest.raises(ValueError, match="item 2") as raised:
        otlp_headers("a=1,secret-without-name")
    assert "secret" not in str(raised.value)


def _config(tmp_path: Path, tracing: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "policies": {"files": ["p.yaml"]}, "backends": [{"name": "b", "url": "http://b"}],
        "models": {"m": ["b"]}, "tracing": tracing}))
    return path


def test_headers_env_must_be_set_and_well_formed(tmp_path: Path) -> None:
    path = _config(tmp_path, {"enabled": True, "headers_env": "OTLP_HEADERS"})
    with pytest.raises(ConfigError, match="OTLP_HEADERS is not set"):
        load_settings(path, environ={})
    with pytest.raises(ConfigError, match="name=value") as raised:
        load_settings(path, environ={"OTLP_HEADERS": "token-only"})
    assert "token-only" not in str(raised.value)
    assert load_settings(path, environ={"OTLP_HEADERS": "a=b"}).tracing.headers_env
    off = _config(tmp_path, {"enabled": False, "headers_env": "OTLP_HEADERS"})
    assert load_settings(off, environ={}).tracing.enabled is False


@pytest.mark.parametrize("tracing", [{"sample_ratio": 1.5}, {"endpoint": "collector:4318"},
                                     {"service_name": "has space"}, {"unknown": 1}])
def test_invalid_tracing_settings_are_refused(tmp_path: Path, tracing: dict[str, object]
                                              ) -> None:
    with pytest.raises(ConfigError):
        load_settings(_config(tmp_path, tracing), environ={})
