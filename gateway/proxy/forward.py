"""Send a request to the first backend that answers, failing over before any byte reaches the
client: on connection errors, timeouts and 5xx answers. A 401/403 refuses the gateway's own
credential, not the client's, so it counts as a backend failure too (and is logged loudly).
Any other 4xx is the client's problem and is returned as is: another backend would refuse it too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp

from gateway.api import ApiRequest
from gateway.attestation.verifier import AttestationService
from gateway.errors import UpstreamFailed, UpstreamTimeout
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.proxy.upstream import UpstreamPool
from gateway.settings import BackendSettings

log = get_logger("veil.proxy")


@dataclass(frozen=True)
class UpstreamReply:
    backend: BackendSettings
    response: aiohttp.ClientResponse


class Forwarder:
    def __init__(self, pool: UpstreamPool, metrics: Metrics,
                 attestation: AttestationService) -> None:
        self._pool = pool
        self._metrics = metrics
        self._attestation = attestation

    async def open(self, request: ApiRequest, backends: list[BackendSettings],
                   payload: bytes | None, request_id: str, *, method: str = "POST",
                   path: str | None = None) -> UpstreamReply:
        """Return the first usable upstream response; the caller must close it. `path` (with
        its vetted query) replaces the endpoint's own, for reads of stored state."""
        timeouts = auth_failures = 0
        for backend in backends:
            # Our own header name: upstreams give X-Request-ID their own rules (llama.cpp's
            # server refuses any value that is not a UUID).
            headers = {**request.headers, **self._pool.headers[backend.name],
                       "X-Veil-Request-ID": request_id}
            if request.stream:
                headers["Accept"] = "text/event-stream"
            url = backend.url + (path or request.endpoint.path)
            started = time.perf_counter()
            try:
                # An attested backend is reached only on the certificate its evidence is
                # bound to; a changed key is refused and triggers re-attestation.
                pin = self._attestation.pin(backend.name) if backend.attestation else None
                response = await self._pool.session(backend.name).request(
                    method, url, data=payload, headers=headers, allow_redirects=False,
                    ssl=pin if pin is not None else True)
            except TimeoutError:
                timeouts += 1
                self._failed(backend, "timeout", started)
                continue
            except aiohttp.ServerFingerprintMismatch:
                self._attestation.key_changed(backend.name)
                self._failed(backend, "key_changed", started)
                continue
            except aiohttp.ClientError as exc:
                self._failed(backend, "connect_error", started, type(exc).__name__)
                continue
            if response.status >= 500 or response.status in (401, 403):
                response.close()
                auth_failures += response.status in (401, 403)
                self._failed(backend, f"http_{response.status}", started)
                continue
            self._metrics.upstream_answered(backend.name, time.perf_counter() - started)
            return UpstreamReply(backend, response)
        if timeouts == len(backends):
            raise UpstreamTimeout("No backend answered in time.")
        if auth_failures:
            log.error("upstream_refused_gateway_credential", backends=[b.name for b in backends])
            raise UpstreamFailed("A backend refused the gateway's upstream credential.",
                                 code="upstream_auth_failed")
        raise UpstreamFailed("No backend could serve the request.")

    def _failed(self, backend: BackendSettings, outcome: str, started: float,
                detail: str | None = None) -> None:
        self._metrics.upstream_requests.labels(backend.name, outcome).inc()
        log.warning("upstream_failed", backend=backend.name, outcome=outcome, error=detail,
                    elapsed_ms=round((time.perf_counter() - started) * 1000, 1))
