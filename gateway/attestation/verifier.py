"""Keep backends attested and answer, per request, which trust levels each one meets.

For every backend with `attestation` in config, a background task decides when to attest it:
at start, every `refresh_s`, early enough that no verdict lapses in between, at once when its
TLS key changes (the pinned connection refuses it) and when policies are reloaded. One
attestation is three steps, each its own module: fetch the evidence over the backend's pinned
TLS connection (fetch.py), verify it (evidence.py), evaluate it against every trust level of
every policy in force (verdicts.py, with the key sets from jwks.py). All their I/O goes through
one transport (transport.py), which tests replace with a fake.

What a request needs is then a dictionary lookup: (policy digest, level) -> until when it is
met. Any failure leaves the backend without a verdict (fail closed) until an attestation
succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from gateway.attestation.collateral import CollateralStore
from gateway.attestation.evidence import Evidence, EvidenceVerifier
from gateway.attestation.fetch import EvidenceFetcher
from gateway.attestation.jwks import JwksCache
from gateway.attestation.levels import TrustLevel
from gateway.attestation.transport import NetworkTransport, Transport
from gateway.attestation.trust_roots import Roots
from gateway.attestation.verdicts import key_set_urls, verdicts
from gateway.errors import EvidenceError
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.settings import BackendSettings, Settings

log = get_logger("veil.attestation")
RETRY_S = 5.0  # after a failure, try again this soon (or every refresh_s, if sooner)

TrustLevels = Callable[[], list[tuple[str, str, TrustLevel]]]  # (policy digest, name, level)


@dataclass
class BackendState:
    backend: BackendSettings
    evidence: Evidence | None = None
    met: dict[tuple[str, str], float] = field(default_factory=dict)  # -> expires at
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class AttestationService:
    """`transport` (default: the network) carries the certificate read, the evidence, key sets,
    AMD KDS and Intel PCS; `roots` (default: the pinned ones, AMD's from
    `attestation.amd_roots_dir` when set) are what every chain must end at."""

    def __init__(self, settings: Settings, trust_levels: TrustLevels, metrics: Metrics, *,
                 clock: Callable[[], float] = time.time, transport: Transport | None = None,
                 roots: Roots | None = None) -> None:
        self._states = {b.name: BackendState(b) for b in settings.backends if b.attestation}
        self._trust_levels = trust_levels
        self._metrics = metrics
        self._clock = clock
        self._network: NetworkTransport | None = None  # made here, so closed here
        if transport is None:
            transport = self._network = NetworkTransport()
        roots = roots or Roots.pinned(settings.attestation.amd_roots_dir)
        self._fetcher = EvidenceFetcher(transport)
        self._verifier = EvidenceVerifier(
            roots, CollateralStore(settings.attestation, transport, clock), clock)
        self._jwks = JwksCache(transport, clock)
        self._tasks: list[asyncio.Task[None]] = []

    # -- the request path: lookups only ------------------------------------------------------

    def meets(self, backend: str, policy: str, levels: tuple[str, ...]) -> bool:
        if not levels:
            return True
        state = self._states.get(backend)
        if state is None or state.evidence is None:
            return False
        now = self._clock()
        return all(state.met.get((policy, level), 0.0) > now for level in levels)

    def pin(self, backend: str) -> aiohttp.Fingerprint | None:
        state = self._states.get(backend)
        if state is None or state.evidence is None:
            return None
        return aiohttp.Fingerprint(state.evidence.certificate_sha256)

    def digest(self, backend: str) -> str | None:
        state = self._states.get(backend)
        return state.evidence.digest if state and state.evidence else None

    def key_changed(self, backend: str) -> None:
        """The pinned certificate was refused: forget the verdict and re-attest now."""
        state = self._states.get(backend)
        if state is not None:
            log.warning("attestation_key_changed", backend=backend)
            state.evidence, state.met = None, {}
            state.wake.set()

    def policies_changed(self) -> None:
        """Re-evaluate at once (a level removed or tightened takes effect now), then re-attest
        (a level may name a key set not fetched yet)."""
        levels = self._trust_levels()
        for state in self._states.values():
            if state.evidence is not None:
                state.met = verdicts(state.evidence, levels, self._jwks.keys, self._clock())
            state.wake.set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep_attested(state))
                       for state in self._states.values()]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._network is not None:
            await self._network.close()

    # -- when to attest -------------------------------------------------------------------------

    async def _keep_attested(self, state: BackendState) -> None:
        settings = state.backend.attestation
        assert settings is not None  # noqa: S101 (only attested backends have a state)
        while True:
            state.wake.clear()
            delay = min(settings.refresh_s, RETRY_S)
            if await self._attest(state):
                delay = self._next_check(state, settings.refresh_s)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation
            # that `close` sends when the event is set at the same moment (and close hangs).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await state.wake.wait()

    async def _attest(self, state: BackendState) -> bool:
        """One attestation; its verdict, or none at all, replaces the one held."""
        name = state.backend.name
        try:
            evidence = await self._verifier.verify(await self._fetcher.fetch(state.backend))
            levels = self._trust_levels()
            await self._jwks.refresh(key_set_urls(levels))
            met = verdicts(evidence, levels, self._jwks.keys, self._clock())
        except Exception as exc:  # any failure, even a bug, means no verdict
            state.evidence, state.met = None, {}
            self._metrics.attestations.labels(name, "refused").inc()
            log.error("attestation_failed", backend=name,  # noqa: TRY400
                      reason=str(exc) if isinstance(exc, EvidenceError) else type(exc).__name__)
            return False
        state.evidence, state.met = evidence, met
        self._metrics.attestations.labels(name, "verified").inc()
        log.info("attested", backend=name, digest=evidence.digest,
                 levels=sorted({level for _, level in met}))
        return True

    def _next_check(self, state: BackendState, refresh_s: float) -> float:
        """Re-attest every `refresh_s`, and early enough that no level lapses in between
        (10% of the remaining time, at least 1 s, before the first expiry)."""
        if not state.met:
            return refresh_s
        remaining = min(state.met.values()) - self._clock()
        return max(1.0, min(refresh_s, remaining * 0.9))
