"""Send a request to a model's backends in the balancer's order, failing over before any byte
reaches the client. What each answer means:

- 2xx: the reply, relayed.
- another 4xx (not 401, 403, 408 or 429): the request's own fault, which every backend would
  refuse alike: not retried; the client gets the backend's words (restored) and its name.
- 401/403: the backend refuses the gateway's own credential: a backend failure, logged loudly.
- 429, or a 503 with `Retry-After`: the backend asks for rest; it gets none of our requests for
  that long, and the next backend is tried.
- 3xx, 408, 5xx, connection errors and timeouts: a failure (toward ejection); the next one.

Every retry draws on the retry budget; when it is spent, the failure so far is the answer.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from gateway.api import ApiRequest
from gateway.attestation.verifier import AttestationService
from gateway.errors import (
    BodyTooLarge,
    GatewayError,
    UpstreamBusy,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamRefused,
    UpstreamTimeout,
)
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.observability.tracing import NO_ATTEMPT, AttemptSpan, Tracing
from gateway.offload import off_loop_if_big
from gateway.proxy.balance import Balancer
from gateway.proxy.budget import RetryBudget
from gateway.proxy.health import Health
from gateway.proxy.target import upstream_path, upstream_payload
from gateway.proxy.upstream import UpstreamPool
from gateway.settings import BackendSettings
from gateway.streams import read_at_most

log = get_logger("veil.proxy")

WORDS_BYTES = 16 * 1024  # of an error body read for its message
WORDS_CHARS = 1000  # of that message passed to the client
WORDS_READ_S = 5.0
SHORT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # an upstream's error code or param
CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _same(text: str) -> str:
    return text


@dataclass(frozen=True)
class UpstreamReply:
    backend: BackendSettings
    response: aiohttp.ClientResponse
    span: AttemptSpan = NO_ATTEMPT  # ended by `Forwarder.finished`


@dataclass(frozen=True)
class Call:
    """One request to forward, as every attempt sends it."""

    request: ApiRequest
    payload: bytes | None
    request_id: str
    method: str
    path: str | None
    restore: Callable[[str], str]


@dataclass
class Attempts:
    """What went wrong so far, for the answer if no backend serves the request."""

    tried: list[str] = field(default_factory=list)
    timeouts: int = 0
    auth: int = 0
    rested: int = 0
    rate_limited: int = 0
    last_words: str = ""  # "; the last, 'b', answered 500: <its message>"
    budget_spent: bool = False


class Forwarder:
    def __init__(self, pool: UpstreamPool, metrics: Metrics, attestation: AttestationService,
                 *, health: Health, balancer: Balancer, budget: RetryBudget,
                 tracing: Tracing | None = None) -> None:
        self._pool = pool
        self._tracing = tracing
        self._metrics = metrics
        self._attestation = attestation
        self.health = health
        self._balancer = balancer
        self._budget = budget

    async def open(self, request: ApiRequest, backends: list[BackendSettings],
                   payload: bytes | None, request_id: str, *, method: str = "POST",
                   path: str | None = None, restore: Callable[[str], str] = _same,
                   retrying: bool = False) -> UpstreamReply:
        """The first usable upstream response; the caller must hand it to `finished`.
        `path` (with its vetted query) replaces the endpoint's own, for reads of stored state;
        `restore` turns placeholders in a backend's error message back into the client's
        values; `retrying`: this request already went to a backend (and `may_retry` said yes),
        so it earns the budget nothing more."""
        plan = self._balancer.plan(backends)
        call = Call(request, payload, request_id, method, path, restore)
        if not retrying:
            self._budget.deposit()
        attempts = Attempts()
        for backend in plan:
            if attempts.tried:
                if not self._budget.withdraw():
                    attempts.budget_spent = True
                    self._metrics.retries.labels("budget_exhausted").inc()
                    break
                self._metrics.retries.labels("retried").inc()
            attempts.tried.append(backend.name)
            span = self._tracing.upstream(request, backend, method, len(attempts.tried)) \
                if self._tracing is not None else NO_ATTEMPT
            reply = await self._attempt(call, backend, attempts, span)
            if reply is not None:
                return reply
        raise self._no_backend(attempts)

    def may_retry(self) -> bool:
        """Whether the budget allows one more attempt for a request whose reply broke."""
        allowed = self._budget.withdraw()
        self._metrics.retries.labels("retried" if allowed else "budget_exhausted").inc()
        return allowed

    def finished(self, reply: UpstreamReply, ok: bool | None) -> None:
        """The reply was relayed (ok), broke while being read (a failure of its backend), or
        was abandoned by the client (None: says nothing of the backend)."""
        name = reply.backend.name
        reply.span.ended(ok)
        self.health.ended(name)
        if ok:
            self.health.succeeded(name)
        elif ok is not None:
            self.health.failed(name)

    async def _attempt(self, call: Call, backend: BackendSettings, attempts: Attempts,
                       span: AttemptSpan) -> UpstreamReply | None:
        # Our own header name: upstreams give X-Request-ID their own rules (llama.cpp's
        # server refuses any value that is not a UUID).
        headers = {**call.request.headers, **self._pool.headers[backend.name],
                   "X-Veil-Request-ID": call.request_id}
        if call.request.stream:
            headers["Accept"] = "text/event-stream"
        parent = span.traceparent()  # the gateway's own span: a client's is never forwarded
        if parent is not None:
            headers["traceparent"] = parent
        url = backend.url + upstream_path(backend, call.path or call.request.endpoint.path,
                                          call.request.model)
        payload = await off_loop_if_big(len(call.payload or b""), upstream_payload, backend,
                                        call.request, call.payload)
        started = time.perf_counter()
        self.health.started(backend.name)
        try:
            # An attested backend is reached only on the certificate its evidence is bound
            # to; a changed key is refused and triggers re-attestation.
            pin = self._attestation.pin(backend.name) if backend.attestation else None
            response = await self._pool.session(backend.name).request(
                call.method, url, data=payload, headers=headers, allow_redirects=False,
                ssl=pin if pin is not None else True)
        except TimeoutError:
            attempts.timeouts += 1
            self._failed(backend, "timeout", started, span=span)
            return None
        except aiohttp.ServerFingerprintMismatch:
            self._attestation.key_changed(backend.name)
            self._failed(backend, "key_changed", started, span=span)
            return None
        except aiohttp.ClientError as exc:
            self._failed(backend, "connect_error", started, type(exc).__name__, span=span)
            return None
        except BaseException:  # cancelled (the client went away): no longer in flight
            self.health.ended(backend.name)
            span.failed("cancelled")
            raise
        span.answered(response.status)
        if 200 <= response.status < 300:
            self._metrics.upstream_answered(backend.name, time.perf_counter() - started)
            return UpstreamReply(backend, response, span)
        try:
            words = await _words(response, call.restore)
        except BaseException:
            self.health.ended(backend.name)
            span.failed("cancelled")
            raise
        span.failed(f"http_{response.status}")
        self._refused(backend, response, words, started, attempts)
        return None

    def _refused(self, backend: BackendSettings, response: aiohttp.ClientResponse,
                 words: dict[str, str], started: float, attempts: Attempts) -> None:
        status, name = response.status, backend.name
        outcome = f"http_{status}"
        if status == 429 or (status == 503 and "Retry-After" in response.headers):
            self.health.ended(name)
            self.health.rest(name, status, response.headers.get("Retry-After"))
            attempts.rested += 1
            attempts.rate_limited += status == 429
            self._count(backend, outcome, started)
        elif 400 <= status < 500 and status not in (401, 403, 408):
            self.health.ended(name)
            self.health.succeeded(name)  # it answered, and rightly
            self._count(backend, outcome, started, event="upstream_refused_request")
            said = words.get("message") or "(no message)"
            raise UpstreamRefused(status, f"Backend '{name}' refused the request (HTTP "
                                          f"{status}): {said}",
                                  param=words.get("param"), code=words.get("code"))
        else:
            attempts.auth += status in (401, 403)
            self._failed(backend, outcome, started)
        message = words.get("message")
        attempts.last_words = f"; the last, '{name}', answered HTTP {status}" + \
            (f": {message}" if message else "")

    def _no_backend(self, attempts: Attempts) -> GatewayError:
        tried = len(attempts.tried)
        spent = (" Other backends were not tried: the retry budget is spent (too many are "
                 "failing).") if attempts.budget_spent else ""
        if attempts.timeouts == tried:
            return UpstreamTimeout("No backend answered in time." + spent)
        if attempts.auth:
            log.error("upstream_refused_gateway_credential", backends=attempts.tried)
            return UpstreamFailed("A backend refused the gateway's upstream credential.",
                                  code="upstream_auth_failed")
        if attempts.rested == tried:
            wait = self.health.rest_left_s(attempts.tried)
            if attempts.rate_limited == tried:
                return UpstreamRateLimited(wait or 1.0)
            return UpstreamBusy("Every backend tried asked for time to recover" +
                                attempts.last_words + "." + spent, wait)
        return UpstreamFailed("No backend could serve the request" + attempts.last_words + "." +
                              spent)

    def _failed(self, backend: BackendSettings, outcome: str, started: float,
                detail: str | None = None, *, span: AttemptSpan = NO_ATTEMPT) -> None:
        span.failed(outcome)
        self.health.ended(backend.name)
        self.health.failed(backend.name)
        self._count(backend, outcome, started, detail)

    def _count(self, backend: BackendSettings, outcome: str, started: float,
               detail: str | None = None, event: str = "upstream_failed") -> None:
        """Metrics and a log line: the backend, the outcome and the time; never its words."""
        self._metrics.upstream_requests.labels(backend.name, outcome).inc()
        log.warning(event, backend=backend.name, outcome=outcome, error=detail,
                    elapsed_ms=round((time.perf_counter() - started) * 1000, 1))


async def _words(response: aiohttp.ClientResponse, restore: Callable[[str], str]
                 ) -> dict[str, str]:
    """The message (and code, param) of a backend's error answer, restored for the client and
    cut short; empty if it sent none we can read. The connection is given back either way."""
    try:
        async with asyncio.timeout(WORDS_READ_S):
            body = await read_at_most(response.content, WORDS_BYTES)
    except (BodyTooLarge, TimeoutError, aiohttp.ClientError):
        response.close()
        return {}
    response.release()
    found = _said(body, response.content_type)
    message = found.get("message")
    if message:
        message = CONTROL.sub(" ", restore(message)).strip()
        found["message"] = message[:WORDS_CHARS] + ("…" if len(message) > WORDS_CHARS else "")
    return found


def _said(body: bytes, content_type: str) -> dict[str, str]:
    """OpenAI's and Anthropic's `{"error": {"message", "type", "code", "param"}}`, a bare
    `{"error": "..."}`, `{"message": ...}`, FastAPI's `{"detail": ...}`, or plain text."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        if content_type.startswith("text/plain"):
            return {"message": body.decode("utf-8", "replace")}
        return {}
    if not isinstance(doc, dict):
        return {}
    error = doc.get("error")
    if isinstance(error, dict):
        found = {"message": _text(error.get("message"))}
        code, param = error.get("code"), error.get("param")
        if isinstance(code, str) and SHORT_NAME.match(code):
            found["code"] = code
        if isinstance(param, str) and SHORT_NAME.match(param):
            found["param"] = param
        return {k: v for k, v in found.items() if v}
    message = _text(error if error is not None else doc.get("message", doc.get("detail")))
    return {"message": message} if message else {}


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # FastAPI/pydantic: [{"loc": [...], "msg": "..."}]
        return "; ".join(_text(v.get("msg")) if isinstance(v, dict) else _text(v)
                         for v in value[:10])
    return ""
