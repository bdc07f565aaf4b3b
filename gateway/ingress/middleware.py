"""The request-context middleware: request id, errors, access log, metrics, concurrency."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
import traceback
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.api import ENDPOINTS, anthropic
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    KeyUnavailable,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
)
from gateway.memory import MemoryReturn
from gateway.observability.audit import AuditTrail
from gateway.observability.facts import FACTS, RequestFacts
from gateway.observability.logging import (
    ACCESS_LOGGER,
    access_logger,
    get_logger,
    start_request_fields,
)
from gateway.observability.metrics import Metrics
from gateway.privacy.patterns import PatternDetector
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.observability.tracing import Tracing

log = get_logger(ACCESS_LOGGER)

REQUEST_ID = web.RequestKey("request_id", str)
POLICY_HEADER = "X-Veil-Policy"  # digest of the policy that decided the request
CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
AUDITED_ROUTES = frozenset({e.name for e in ENDPOINTS} | {
    "models", "model", "responses_retrieve", "responses_input_items", "responses_delete",
    "conversations_retrieve", "conversations_delete", "conversations_items_list",
    "conversations_item", "conversations_item_delete", "unmatched"})
UNAUDITED_ROUTES = frozenset({"healthz", "readyz", "metrics"})  # probes and scrapes
OVERLOADED = Overloaded()


_ID_SCREEN = PatternDetector()
# Our ids: req_ + a random per-process prefix + a counter, 32 hex digits. Unique without a
# system call per request; ids are correlation handles, not secrets (clients send their own).
_id_prefix = secrets.token_hex(8)
_id_counter = itertools.count()


def _new_id_prefix() -> None:
    global _id_prefix  # noqa: PLW0603 (a forked child must not repeat its parent's ids)
    _id_prefix = secrets.token_hex(8)


os.register_at_fork(after_in_child=_new_id_prefix)


def request_id_for(request: web.Request) -> str:
    """Reuse a well-formed client id (for end-to-end tracing), otherwise make one. The id is
    written to logs and the audit trail, so one that looks like a secret or personal data is
    never used."""
    given = request.headers.get("X-Request-ID", "")
    if given and CLIENT_REQUEST_ID.match(given) and not _ID_SCREEN.detect(given):
        return given
    return new_request_id()


def new_request_id() -> str:
    """One of our own ids (also for answers given before a request could be parsed)."""
    return f"req_{_id_prefix}{next(_id_counter):016x}"


_ERROR_BODIES = {endpoint.path: endpoint.error_body for endpoint in ENDPOINTS}


def error_response(error: GatewayError, request: web.Request, request_id: str) -> web.Response:
    """The error in the shape the client's SDK reads: the endpoint's own; on routes both
    formats share (`/v1/models`), Anthropic's when the client speaks it."""
    body = error.envelope(request_id)
    shape = _ERROR_BODIES.get(request.path)
    if shape is None and "anthropic-version" in request.headers:
        shape = anthropic.error_body
    if shape is not None:
        body = shape(body)
    return web.json_response(body, status=error.status,
                             headers={**error.headers, "X-Request-ID": request_id})


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> GatewayError:
    if exc.status == 404:
        return NotFound(f"Unknown request URL: {request.method} {request.path}.",
                        code="unknown_url")
    if exc.status == 405:
        return MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")
    if exc.status == 413:
        return PayloadTooLarge("Request body is too large.")
    return InvalidRequest(exc.reason or "Bad request.")


def _where(exc: BaseException) -> str:
    """File and line that raised, for operators, without the message (which may hold data)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def request_context(*, metrics: Metrics, settings: Settings, audit: AuditTrail | None,
                    memory: MemoryReturn | None = None,
                    tracing: Tracing | None = None) -> Middleware:
    """Request id, error envelope, concurrency limit, metrics, the access log, the audit
    record and the request's trace span, in one place: one middleware keeps the coroutine
    chain every I/O wake-up resumes short."""
    max_in_flight = settings.limits.max_concurrent_requests

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request_id_for(request)
        request[REQUEST_ID] = request_id
        start_request_fields(request_id=request_id)
        route = request.match_info.route.name or "unmatched"
        facts = request[FACTS] = RequestFacts(route)
        response: web.StreamResponse
        metrics.in_flight_now += 1
        try:
            if metrics.in_flight_now > max_in_flight:
                response = _refused(facts, OVERLOADED, request, request_id)
            else:
                response = await handler(request)
        except GatewayError as exc:
            response = _refused(facts, exc, request, request_id)
        except web.HTTPException as exc:
            response = _refused(facts, _from_http_exception(exc, request), request, request_id)
        except Exception as exc:
            # Not log.exception: the message and traceback locals may carry request content.
            log.error("unhandled_error", error_type=type(exc).__name__,  # noqa: TRY400
                      where=_where(exc))
            response = _refused(facts, GatewayError("Internal error."), request, request_id)
        finally:
            metrics.in_flight_now -= 1
        if not response.prepared:
            response.headers["X-Request-ID"] = request_id
            if facts.policy:
                response.headers[POLICY_HEADER] = facts.policy
        elapsed = time.perf_counter() - started
        metrics.request_answered(route, response.status, elapsed)
        metrics.outcome(facts)
        stages = facts.stage_seconds()
        metrics.stages(stages)
        if audit is not None and route in AUDITED_ROUTES:
            refusal = _audit(audit, facts.record(request_id, response.status, elapsed * 1000,
                                                 stages), response.prepared)
            if refusal is not None:
                response = _refused(facts, refusal, request, request_id)
                response.headers["X-Request-ID"] = request_id
        access_logger().info("request", method=request.method, route=route,
                             status=response.status, duration_ms=round(elapsed * 1000, 2))
        if memory is not None:
            memory.after(facts.body_bytes)
        return response

    return middleware if tracing is None else _traced(middleware, tracing)


def _traced(middleware: Middleware, tracing: Tracing) -> Middleware:
    """`middleware` inside the request's span (when tracing is off, not even this frame)."""

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not tracing.traces(request):
            return await middleware(request, handler)
        with tracing.request(request) as span:
            response = await middleware(request, handler)
            span.answered(request[FACTS], request[REQUEST_ID], response.status)
            return response

    return traced


def _audit(audit: AuditTrail, record: dict[str, Any], sent: bool) -> KeyUnavailable | None:
    """No audit record, no answer: the refusal to send instead when the record cannot be
    MAC'd (the HSM gone). A stream already under way (`sent`) cannot be recalled; it is
    logged, and its record is missing from the chain (whose `seq` stays unbroken)."""
    try:
        audit.append(record)
    except KeyUnavailable as exc:
        log.error("audit_record_failed", error=exc.message, sent=sent)  # noqa: TRY400
        return None if sent else exc
    return None


def _refused(facts: RequestFacts, error: GatewayError, request: web.Request,
             request_id: str) -> web.Response:
    facts.ended_with(error.code, error.status)
    return error_response(error, request, request_id)
