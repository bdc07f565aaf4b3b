"""OpenTelemetry traces through the real gateway: the official openai SDK (and raw httpx for
trace headers) in front of the demo upstream, spans caught by the SDK's in-memory exporter, or
by a real OTLP/HTTP receiver on loopback."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.app import GATEWAY, Outbound
from tests.conftest import Demo
from tests.otlp import Collector
from tests.servers import TEST_KEY, ServerThread, demo_backend, gateway_for, settings_for

TRACING = {"enabled": True}
POLICY: dict[str, Any] = {"version": 1, "name": "traced", "detectors": {"builtin": ["patterns"]},
                          "actions": {"IBAN": "block"}}
STAGES = ["veil.ingress", "veil.detect", "veil.mask", "veil.upstream", "veil.relay"]
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
# What must never be in a span: a prompt's (and so the echoed reply's) personal data.
EMAIL, CARD, NAME = "marie.curie@radium.example", "4111 1111 1111 1111", "Marie Sklodowska"
CANARY_PROMPT = f"Write to {NAME} at {EMAIL} and charge card {CARD} please"


class Traced:
    def __init__(self, gateway: ServerThread, exporter: InMemorySpanExporter) -> None:
        self.gateway = gateway
        self.exporter = exporter

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)

    def spans(self, servers: int = 1, timeout: float = 5.0) -> list[ReadableSpan]:
        """Every finished span, once `servers` request spans have ended (a streamed reply's
        last bytes can reach the client just before its span ends)."""
        tracing = self.gateway.app[GATEWAY].tracing
        assert tracing is not None
        deadline = time.monotonic() + timeout
        while True:
            tracing.flush()
            spans = list(self.exporter.get_finished_spans())
            if sum(s.kind == SpanKind.SERVER for s in spans) >= servers or \
                    time.monotonic() > deadline:
                return spans
            time.sleep(0.02)


def traced_gateway(demo: Demo, **tracing: Any) -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    settings = settings_for([demo_backend("demo-openai", demo.url)], policy=POLICY,
                            tracing={**TRACING, **tracing})
    with gateway_for(settings, outbound=Outbound(spans=exporter)) as gateway:
        yield Traced(gateway, exporter)


@pytest.fixture
def traced(demo: Demo) -> Iterator[Traced]:
    yield from traced_gateway(demo)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None
            and s.parent.span_id == parent.context.span_id]


def upstream_traceparent(demo: Demo) -> tuple[str, str, str]:
    header = demo.state.last_headers["traceparent"]
    match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})", header)
    assert match, header
    return match[1], match[2], match[3]


def test_chat_request_is_a_server_span_with_stages_and_a_genai_client_span(
        traced: Traced, demo: Demo) -> None:
    reply = traced.client().chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Hello traces"}])
    spans = traced.spans()
    server = one(spans, "POST /v1/chat/completions")
    assert server.kind == SpanKind.SERVER
    assert server.parent is None
    assert server.attributes is not None
    assert dict(server.attributes) | {"veil.request_id": "-"} == {
        "http.request.method": "POST", "http.route": "/v1/chat/completions",
        "veil.route": "chat_completions", "http.response.status_code": 200,
        "veil.request_id": "-", "veil.tenant": "test",
        "veil.policy": server.attributes["veil.policy"], "veil.decision": "forwarded",
        "veil.stream": False, "veil.body_bytes": server.attributes["veil.body_bytes"],
        "veil.rule": "default", "veil.backend": "demo-openai",
        "gen_ai.request.model": "test-model", "gen_ai.operation.name": "chat"}
    assert str(server.attributes["veil.request_id"]).startswith("req_")
    assert str(server.attributes["veil.policy"]).startswith("sha256:")
    assert server.status.status_code == StatusCode.UNSET

    kids = children(spans, server)
    assert sorted(s.name for s in kids) == sorted([*STAGES, "chat test-model"])
    stages = sorted((s for s in kids if s.name in STAGES), key=lambda s: s.start_time or 0)
    assert [s.name for s in stages] == STAGES  # in the order they ran, end to start
    for before, after in itertools.pairwise(stages):
        assert before.end_time == after.start_time
    assert server.start_time <= stages[0].start_time  # type: ignore[operator]
    assert stages[-1].end_time <= server.end_time  # type: ignore[operator]

    upstream = one(spans, "chat test-model")
    assert upstream.kind == SpanKind.CLIENT
    assert dict(upstream.attributes or {}) == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "test-model",
        "gen_ai.provider.name": "openai", "server.address": "127.0.0.1",
        "server.port": demo.server.port, "http.request.method": "POST",
        "veil.backend": "demo-openai", "veil.attempt": 1, "veil.stream": False,
        "http.response.status_code": 200, "gen_ai.response.model": "test-model",
        "gen_ai.usage.input_tokens": reply.usage.prompt_tokens,  # type: ignore[union-attr]
        "gen_ai.usage.output_tokens": reply.usage.completion_tokens}  # type: ignore[union-attr]
    assert upstream.status.status_code == StatusCode.UNSET

    # The upstream was handed the client span's own context: its spans join this trace.
    trace_id, span_id, flags = upstream_traceparent(demo)
    assert int(trace_id, 16) == server.context.trace_id == upstream.context.trace_id
    assert int(span_id, 16) == upstream.context.span_id
    assert int(flags, 16) & 1  # sampled (0x02, the SDK's random-trace-id flag, may join it)
    assert "tracestate" not in demo.state.last_headers
    assert {s.resource.attributes["service.name"] for s in spans} == {"veil"}


def test_streamed_reply_spans_end_with_the_stream(traced: Traced, demo: Demo) -> None:
    stream = traced.client().chat.completions.create(
        model="test-model", stream=True, messages=[{"role": "user", "content": "Stream it"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.endswith("Stream it")
    spans = traced.spans()
    server = one(spans, "POST /v1/chat/completions")
    assert server.attributes is not None
    assert server.attributes["veil.stream"] is True
    upstream = one(spans, "chat test-model")
    assert upstream.parent is not None
    assert upstream.parent.span_id == server.context.span_id
    assert upstream.status.status_code == StatusCode.UNSET
    relay = one(spans, "veil.relay")
    # the client span covers the whole stream: it ends after the relay stage began
    assert upstream.end_time >= relay.start_time  # type: ignore[operator]
    assert int(upstream_traceparent(demo)[1], 16) == upstream.context.span_id


def test_refused_requests_have_error_status_with_the_code_only(traced: Traced) -> None:
    with pytest.raises(openai.BadRequestError):
        traced.client().chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "Pay to DE89 3704 0044 0532 0130 00"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=traced.gateway.url + "/v1", api_key="veil-wrong-key-000000",
                      max_retries=0).chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "hi"}])
    spans = traced.spans(servers=2)
    blocked, unauthenticated = sorted((s for s in spans if s.kind == SpanKind.SERVER),
                                      key=lambda s: s.start_time or 0)
    assert blocked.status.status_code == StatusCode.ERROR
    assert blocked.status.description == "sensitive_data_blocked"
    assert blocked.attributes is not None
    assert blocked.attributes["error.type"] == "sensitive_data_blocked"
    assert blocked.attributes["veil.decision"] == "blocked"
    assert blocked.attributes["veil.rule"] == "actions.IBAN=block"
    assert blocked.attributes["veil.entities.IBAN"] == 1
    assert blocked.attributes["http.response.status_code"] == 400
    assert not [s for s in spans if s.kind == SpanKind.CLIENT]  # nothing went upstream
    assert [s.name for s in children(spans, blocked)] == ["veil.ingress", "veil.detect"]
    assert unauthenticated.status.description == "invalid_api_key"
    assert unauthenticated.attributes is not None
    assert "veil.tenant" not in unauthenticated.attributes
    assert unauthenticated.attributes["http.response.status_code"] == 401


def test_failed_upstream_attempt_is_an_error_client_span(demo: Demo) -> None:
    exporter = InMemorySpanExporter()
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    settings = settings_for([demo_backend("dead", dead), demo_backend("demo-openai", demo.url)],
                            {"test-model": ["dead", "demo-openai"]}, policy=POLICY,
                            tracing=TRACING)
    with gateway_for(settings, outbound=Outbound(spans=exporter)) as gateway:
        traced = Traced(gateway, exporter)
        traced.client().chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "fail over"}])
        spans = traced.spans()
    attempts = sorted((s for s in spans if s.kind == SpanKind.CLIENT),
                      key=lambda s: s.start_time or 0)
    assert [(s.attributes or {})["veil.backend"] for s in attempts] == ["dead", "demo-openai"]
    assert attempts[0].status.status_code == StatusCode.ERROR
    assert (attempts[0].attributes or {})["error.type"] == "connect_error"
    assert (attempts[1].attributes or {})["veil.attempt"] == 2
    assert int(upstream_traceparent(demo)[1], 16) == attempts[1].context.span_id


def send(gateway: ServerThread, headers: list[tuple[str, str]]) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", headers=[
        ("Authorization", f"Bearer {TEST_KEY}"), *headers],
        json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})


def test_a_client_traceparent_is_continued_and_its_tracestate_dropped(
        traced: Traced, demo: Demo) -> None:
    response = send(traced.gateway, [("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),
                                     ("tracestate", f"vendor={EMAIL.replace('@', '_')}")])
    assert response.status_code == 200
    spans = traced.spans()
    server = one(spans, "POST /v1/chat/completions")
    assert f"{server.context.trace_id:032x}" == CLIENT_TRACE
    assert server.parent is not None
    assert server.parent.is_remote
    assert f"{server.parent.span_id:016x}" == CLIENT_SPAN
    assert not server.context.trace_state
    assert not server.parent.trace_state
    trace_id, span_id, _ = upstream_traceparent(demo)
    assert trace_id == CLIENT_TRACE  # the same trace, on our client span, not the client's
    assert span_id != CLIENT_SPAN
    assert int(span_id, 16) == one(spans, "chat test-model").context.span_id
    assert "tracestate" not in demo.state.last_headers


@pytest.mark.parametrize("headers", [
    [("traceparent", f"00-{CLIENT_TRACE.upper()}-{CLIENT_SPAN}-01")],  # uppercase
    [("traceparent", f"01-{CLIENT_TRACE}-{CLIENT_SPAN}-01")],  # a version we do not know
    [("traceparent", f"00-{'0' * 32}-{CLIENT_SPAN}-01")],  # the invalid trace id
    [("traceparent", f"00-{CLIENT_TRACE}-{'0' * 16}-01")],  # the invalid span id
    [("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01-extra")],
    [("traceparent", f"00-{CLIENT_TRACE[:-1]}-{CLIENT_SPAN}-01")],
    [("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),  # two: which one?
     ("traceparent", f"00-{'1' * 32}-{CLIENT_SPAN}-01")],
])
def test_a_malformed_traceparent_starts_a_new_trace(traced: Traced, demo: Demo,
                                                    headers: list[tuple[str, str]]) -> None:
    assert send(traced.gateway, headers).status_code == 200
    server = one(traced.spans(), "POST /v1/chat/completions")
    assert server.parent is None
    assert f"{server.context.trace_id:032x}" not in (CLIENT_TRACE, "1" * 32)
    assert int(upstream_traceparent(demo)[0], 16) == server.context.trace_id


def test_a_client_cannot_force_sampling(demo: Demo) -> None:
    """sample_ratio 0: nothing is recorded even when the client says 'sampled'; the upstream
    still gets a traceparent (not sampled) so its own spans can join the client's trace."""
    for traced in traced_gateway(demo, sample_ratio=0.0):
        assert send(traced.gateway, [("traceparent",
                                      f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")]).status_code == 200
        assert traced.spans(timeout=0.3) == []
        trace_id, _, flags = upstream_traceparent(demo)
        assert trace_id == CLIENT_TRACE
        assert not int(flags, 16) & 1


def span_text(spans: list[ReadableSpan]) -> str:
    """Everything a span holds, as an exporter would see it (names, attributes, events,
    status, links, resource), in one string."""
    return "\n".join(s.to_json() for s in spans)


def test_no_prompt_reply_or_placeholder_reaches_a_span(traced: Traced, demo: Demo) -> None:
    client = traced.client()
    reply = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": CANARY_PROMPT}])
    assert EMAIL in (reply.choices[0].message.content or "")  # restored in the reply
    sent = demo.state.last_body["messages"][0]["content"]
    placeholders = re.findall(r"<[A-Z_]+_\d+>", sent)
    assert len(placeholders) >= 2
    assert EMAIL not in sent
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="test-model", stream=True,
        messages=[{"role": "user", "content": CANARY_PROMPT}]) if c.choices)
    assert CARD in streamed
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="test-model", messages=[
            {"role": "user", "content": CANARY_PROMPT + " IBAN DE89 3704 0044 0532 0130 00"}])
    spans = traced.spans(servers=3)
    assert len([s for s in spans if s.kind == SpanKind.SERVER]) == 3
    text = span_text(spans)
    needles = [EMAIL, CARD, CARD.replace(" ", ""), NAME, "Sklodowska", "radium", "Write to",
               "DE89", *placeholders]
    assert [n for n in needles if n in text] == []
    entities = {k: v for s in spans for k, v in (s.attributes or {}).items()
                if k.startswith("veil.entities.")}
    assert entities["veil.entities.EMAIL"] == 1
    assert entities["veil.entities.CREDIT_CARD"] == 1
    assert all(not s.events for s in spans)


def test_tracing_off_creates_nothing_and_forwards_no_client_trace(demo: Demo) -> None:
    exporter = InMemorySpanExporter()
    settings = settings_for([demo_backend("demo-openai", demo.url)], policy=POLICY)
    assert settings.tracing.enabled is False
    with gateway_for(settings, outbound=Outbound(spans=exporter)) as gateway:
        assert gateway.app[GATEWAY].tracing is None
        assert gateway.app[GATEWAY].pipeline.forwarder._tracing is None
        response = send(gateway, [("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),
                                  ("tracestate", "vendor=x")])
        assert response.status_code == 200
    assert exporter.get_finished_spans() == ()
    assert "traceparent" not in demo.state.last_headers
    assert "tracestate" not in demo.state.last_headers


def test_spans_are_exported_over_otlp_http_and_flushed_on_stop(demo: Demo) -> None:
    collector = Collector()
    with ServerThread(collector.app) as receiver:
        settings = settings_for([demo_backend("demo-openai", demo.url)], policy=POLICY,
                                tracing={"enabled": True, "service_name": "veil-test",
                                         "endpoint": receiver.url + "/v1/traces",
                                         "headers_env": "OTLP_HEADERS"})
        environ = {"DEMO_KEY": "upstream-secret", "OTLP_HEADERS": "authorization=Bearer%20abc"}
        with gateway_for(settings, environ=environ) as gateway:
            openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0
                          ).chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": CANARY_PROMPT}])
            # not flushed here: the batch goes out when the gateway stops
        spans = [(resource.resource, span) for received in collector.requests
                 for resource in received.resource_spans
                 for scope in resource.scope_spans for span in scope.spans]
    assert collector.headers
    assert collector.headers[0]["authorization"] == "Bearer abc"
    names = sorted(span.name for _, span in spans)
    assert names == sorted(["POST /v1/chat/completions", "chat test-model", *STAGES])
    services = {a.value.string_value for resource, _ in spans for a in resource.attributes
                if a.key == "service.name"}
    assert services == {"veil-test"}
    server = next(span for _, span in spans if span.name == "POST /v1/chat/completions")
    upstream = next(span for _, span in spans if span.name == "chat test-model")
    assert upstream.parent_span_id == server.span_id
    assert upstream.trace_id == server.trace_id
    assert upstream_traceparent(demo)[0] == server.trace_id.hex()
    attributes = {a.key: a.value for a in upstream.attributes}
    assert attributes["gen_ai.request.model"].string_value == "test-model"
    wire = b"".join(collector.bodies)
    assert [n for n in (EMAIL, NAME, CARD) if n.encode() in wire] == []
