"""Active health checks, for the backends whose config asks for them: GET the backend's
`health_check.path` (or its format's default, gateway/proxy/target.py) every `interval_s`;
anything but a 2xx in time marks it down (ejected until a probe succeeds). Probes carry the
gateway's credential and no request data."""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.attestation.verifier import AttestationService
from gateway.errors import BodyTooLarge
from gateway.proxy.health import Health
from gateway.proxy.target import probe_path
from gateway.proxy.upstream import UpstreamPool
from gateway.settings import BackendSettings, HealthCheck
from gateway.streams import read_at_most

PROBE_BODY_BYTES = 64 * 1024


async def run_probes(backends: list[BackendSettings], pool: UpstreamPool,
                     attestation: AttestationService, health: Health) -> None:
    """Probe every backend that has a health check, until cancelled."""
    await asyncio.gather(*(_probe_forever(b, b.health_check, pool, attestation, health)
                           for b in backends if b.health_check is not None))


async def _probe_forever(backend: BackendSettings, check: HealthCheck, pool: UpstreamPool,
                         attestation: AttestationService, health: Health) -> None:
    while True:
        health.probed(backend.name, await probe(backend, check, pool, attestation))
        await asyncio.sleep(check.interval_s)


async def probe(backend: BackendSettings, check: HealthCheck, pool: UpstreamPool,
                attestation: AttestationService) -> bool:
    pin = attestation.pin(backend.name) if backend.attestation else None
    headers = {k: v for k, v in pool.headers[backend.name].items() if k != "Content-Type"}
    try:
        async with asyncio.timeout(check.timeout_s):
            async with pool.session(backend.name).get(
                    backend.url + probe_path(backend, check), headers=headers,
                    allow_redirects=False, ssl=pin if pin is not None else True) as response:
                await read_at_most(response.content, PROBE_BODY_BYTES)
                return 200 <= response.status < 300
    except (TimeoutError, aiohttp.ClientError, BodyTooLarge):
        return False
