"""OpenTelemetry traces of model requests, when `tracing.enabled`: one tracer provider per
worker process, exporting over OTLP/HTTP in a background thread, flushed when the worker
stops.

A request is a SERVER span (`POST /v1/chat/completions`) with a child per pipeline stage, made
from the marks `RequestFacts.stage` keeps (so the pipeline pays one clock read per stage, as
before), and a CLIENT span per upstream attempt, named and described with the GenAI semantic
conventions, whose ids the upstream receives in `traceparent`. Every attribute goes through
`span_attributes.allowed`; no exception is recorded (messages can quote data) and no event is
added; an error's status says the gateway's error code, nothing else.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from gateway import __version__
from gateway.api import ApiRequest
from gateway.observability.facts import RequestFacts
from gateway.observability.span_attributes import allowed, is_label
from gateway.observability.trace_context import continued, traceparent
from gateway.settings import BackendSettings, TracingSettings, otlp_headers

# GenAI semantic conventions: the operation each endpoint is, and the provider each wire
# format names (what the client addressed; the model server behind it may be another).
OPERATIONS = {"chat_completions": "chat", "messages": "chat", "responses": "chat",
              "completions": "text_completion", "embeddings": "embeddings"}
PROVIDERS = {"openai": "openai", "anthropic": "anthropic"}
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                     "PATCH"})
UNTRACED_ROUTES = frozenset({"healthz", "readyz", "metrics"})  # probes and scrapes: noise


class Tracing:
    def __init__(self, settings: TracingSettings, exporter: SpanExporter) -> None:
        ratio = TraceIdRatioBased(settings.sample_ratio)
        # A client's sampled flag does not decide for us: its traces are kept at our ratio
        # like any other (so no client can make every request of theirs exported).
        sampler = ParentBased(ratio, remote_parent_sampled=ratio,
                              remote_parent_not_sampled=ratio)
        resource = Resource({"service.name": settings.service_name,
                             "service.version": __version__})
        self.provider = TracerProvider(sampler=sampler, resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("veil", __version__)

    def traces(self, request: web.Request) -> bool:
        return request.match_info.route.name not in UNTRACED_ROUTES

    @contextlib.contextmanager
    def request(self, request: web.Request) -> Iterator[RequestSpan]:
        """The request's SERVER span, current for as long as the block runs (the upstream
        spans are its children); it continues a well-formed client `traceparent`."""
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else None
        method = request.method if request.method in METHODS else "_OTHER"
        wall, perf = time.time_ns(), time.perf_counter()
        span = self.tracer.start_span(
            f"{method} {template}" if template else method,
            context=continued(request.headers) or Context(), kind=SpanKind.SERVER,
            start_time=wall, record_exception=False, set_status_on_exception=False,
            attributes=allowed({"http.request.method": method, "http.route": template,
                                "veil.route": request.match_info.route.name}))
        token = otel_context.attach(trace.set_span_in_context(span))
        traced = RequestSpan(self, span, wall, perf)
        try:
            yield traced
        except BaseException:  # cancelled: the client went away, or the worker stops
            _failed(span, "cancelled")
            raise
        finally:
            otel_context.detach(token)
            span.end()

    def upstream(self, request: ApiRequest, backend: BackendSettings, method: str,
                 attempt: int) -> AttemptSpan:
        """A CLIENT span for one attempt at `backend`, child of the current request's."""
        operation = OPERATIONS.get(request.endpoint.name)
        model = request.model if is_label(request.model) else None
        name = f"{operation} {model}" if operation and model else \
            f"{method} {request.endpoint.path}"
        url = urlsplit(backend.url)
        span = self.tracer.start_span(
            name, kind=SpanKind.CLIENT, record_exception=False, set_status_on_exception=False,
            attributes=allowed({
                "gen_ai.operation.name": operation, "gen_ai.request.model": model,
                "gen_ai.provider.name": PROVIDERS.get(backend.format),
                "server.address": url.hostname, "server.port": url.port or
                (443 if url.scheme == "https" else 80), "http.request.method": method,
                "veil.backend": backend.name, "veil.attempt": attempt,
                "veil.stream": request.stream}))
        return AttemptSpan(span)

    def flush(self) -> None:
        self.provider.force_flush()

    def close(self) -> None:
        """Export what is queued (within the exporter's timeout) and stop its thread."""
        self.provider.shutdown()


def build_tracing(settings: TracingSettings, environ: Mapping[str, str],
                  exporter: SpanExporter | None = None) -> Tracing | None:
    """None when tracing is off: nothing is created, and every hook is one `is None` check.
    `exporter`: a test's; else OTLP/HTTP to `settings.endpoint`."""
    if not settings.enabled:
        return None
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,  # the exporter (and `requests`) load only when tracing is on
        )

        headers = otlp_headers(environ[settings.headers_env]) if settings.headers_env else {}
        exporter = OTLPSpanExporter(endpoint=settings.endpoint, headers=headers,
                                    timeout=settings.timeout_s)
    return Tracing(settings, exporter)


@dataclass
class RequestSpan:
    tracing: Tracing
    span: Span
    wall_ns: int  # the request's start, on both clocks: stage marks are perf_counter reads
    perf: float

    def answered(self, facts: RequestFacts, request_id: str, status: int) -> None:
        """What the request came to (from its facts only), and a span per stage it ran."""
        span = self.span
        decided, routed = facts.decided, facts.routed
        attributes: dict[str, object] = {
            "http.response.status_code": status, "veil.request_id": request_id,
            "veil.tenant": facts.tenant, "veil.policy": facts.policy,
            "veil.decision": facts.decision, "veil.stream": facts.stream,
            "veil.body_bytes": facts.body_bytes,
            "veil.rule": decided.rule if decided else facts.refusal,
            "veil.backend": routed.backend if routed else None,
            "veil.failed_open": facts.failed_open or None,
        }
        if facts.model:
            attributes["gen_ai.request.model"] = facts.model
            attributes["gen_ai.operation.name"] = OPERATIONS.get(facts.route)
        if decided is not None:
            attributes["veil.data_classes"] = decided.data_classes or None
            attributes["veil.detectors"] = decided.detectors or None
            attributes.update({f"veil.entities.{kind}": count
                               for kind, count in decided.entities.items()})
        span.set_attributes(allowed(attributes))
        if facts.refusal is not None:
            _failed(span, facts.refusal)
        self._stages(facts)

    def _stages(self, facts: RequestFacts) -> None:
        parent = trace.set_span_in_context(self.span, Context())
        for (_, start), (name, end) in itertools.pairwise(facts.marks):
            stage = self.tracing.tracer.start_span(
                f"veil.{name}", context=parent, start_time=self._ns(start),
                attributes=allowed({"veil.stage": name}))
            stage.end(end_time=self._ns(end))

    def _ns(self, perf: float) -> int:
        return self.wall_ns + int((perf - self.perf) * 1e9)


class AttemptSpan:
    """One upstream attempt's CLIENT span, or nothing (tracing off: `NO_ATTEMPT`). It ends
    when the reply has been relayed whole, or the attempt failed."""

    def __init__(self, span: Span | None) -> None:
        self._span = span

    def traceparent(self) -> str | None:
        return traceparent(self._span.get_span_context()) if self._span is not None else None

    def answered(self, status: int) -> None:
        if self._span is not None:
            self._span.set_attributes(allowed({"http.response.status_code": status}))

    def failed(self, outcome: str) -> None:
        """The attempt ended without a reply to relay: `outcome` as the metrics count it
        (timeout, connect_error, http_503, ...)."""
        if self._span is not None:
            _failed(self._span, outcome)
            self._span.end()

    def replied(self, response: web.StreamResponse) -> None:
        """The model and token counts of a whole JSON reply (a stream's are not parsed)."""
        span = self._span
        if span is None or not span.is_recording() or not isinstance(response, web.Response) \
                or not isinstance(response.body, bytes):
            return
        try:
            reply: Any = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            return
        if isinstance(reply, dict):
            span.set_attributes(allowed(_reply_facts(reply)))

    def ended(self, ok: bool | None) -> None:
        """Relayed (ok), broken while relayed (False), or abandoned by the client (None)."""
        if self._span is None:
            return
        if not ok:
            _failed(self._span, "stream_broke" if ok is False else "abandoned")
        self._span.end()


NO_ATTEMPT = AttemptSpan(None)


def _reply_facts(reply: dict[str, Any]) -> dict[str, object]:
    usage = reply.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return {"gen_ai.response.model": reply.get("model"),
            "gen_ai.usage.input_tokens": usage.get("input_tokens", usage.get("prompt_tokens")),
            "gen_ai.usage.output_tokens": usage.get("output_tokens",
                                                    usage.get("completion_tokens"))}


def _failed(span: Span, code: str) -> None:
    label = code if is_label(code) else "error"
    span.set_attributes({"error.type": label})
    span.set_status(Status(StatusCode.ERROR, label))
