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

With a shared store (gateway/state/shared_attestation.py) replicas attest a backend once
between them: after reading the certificate the backend presents, a replica looks for evidence
another gateway received for that backend and that very certificate, younger than `refresh_s`
and not the one it holds already, and verifies it again here, bound to the certificate it read
itself, with its own roots and its own policies; a level's max age counts from when that
gateway sent the nonce. Only without such evidence does it ask the backend, and then publishes
what verified. Nothing read from the store is trusted: a record that is missing, unusable or
does not verify means asking the backend, exactly as without the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import aiohttp

from gateway.attestation.collateral import CollateralStore, SharedCollateral
from gateway.attestation.evidence import Evidence, EvidenceVerifier
from gateway.attestation.fetch import EvidenceFetcher, Presented, Received
from gateway.attestation.jwks import JwksCache
from gateway.attestation.levels import TrustLevel
from gateway.attestation.rim_store import RimStore
from gateway.attestation.transport import NetworkTransport, Transport
from gateway.attestation.trust_roots import Roots
from gateway.attestation.verdicts import (
    Levels,
    gpu_level_problems,
    key_set_urls,
    level_problems,
    releases_behind,
    rim_sources,
    verdicts,
)
from gateway.errors import EvidenceError
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.settings import BackendSettings, Settings

log = get_logger("veil.attestation")
RETRY_S = 5.0  # after a failure, try again this soon (or every refresh_s, if sooner)
CLOCK_SKEW_S = 5.0  # shared evidence may seem this much younger than zero (replicas' clocks)

TrustLevels = Callable[[], list[tuple[str, str, TrustLevel]]]  # (policy digest, name, level)
Met = dict[tuple[str, str], float]  # (policy digest, level name) -> met until


class SharedEvidence(SharedCollateral, Protocol):
    """Where replicas leave the evidence they received for each other; it never raises."""

    async def evidence(self, backend: str, certificate_sha256: bytes) -> Received | None: ...

    async def publish(self, backend: str, certificate_sha256: bytes, received: Received,
                      ttl_s: float) -> None: ...


@dataclass
class BackendState:
    backend: BackendSettings
    evidence: Evidence | None = None
    met: Met = field(default_factory=dict)  # -> expires at
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    nonce: bytes | None = None  # of the evidence last held: never adopted from the store again
    source: str | None = None  # Attested.source of the evidence held
    error: str | None = None  # why the last attestation failed, as the log says it
    checked_at: float | None = None  # when the last attestation ended, either way
    next_check_at: float | None = None
    started: int = 0  # attestations begun and ended: what `attest_now` waits on
    ended: int = 0
    checked: asyncio.Condition = field(default_factory=asyncio.Condition)


@dataclass(frozen=True)
class LevelStanding:
    """One trust level of one policy in force, against a backend's evidence."""

    policy: str  # the policy's digest
    level: str
    until: float | None  # met until then (None: not met; in the past: lapsed)
    problems: tuple[str, ...]  # why not (none when met, or when there is no evidence)


@dataclass(frozen=True)
class Standing:
    """What the service holds about one attested backend now: the verdicts requests are
    routed by, the evidence behind them, and when it was and will be checked (for the
    studio's Backends view, which shows exactly what the gateway decides on)."""

    evidence: Evidence | None
    levels: tuple[LevelStanding, ...]
    releases: tuple[str, ...]  # signed releases whose measurement matched, in levels met
    source: str | None
    error: str | None
    checked_at: float | None
    next_check_at: float | None


@dataclass(frozen=True)
class Attested:
    received: Received
    evidence: Evidence
    met: Met
    source: str  # "verified": asked of the backend; "shared": another gateway's, verified here


class AttestationService:
    """`transport` (default: the network) carries the certificate read, the evidence, key sets,
    AMD KDS and Intel PCS; `roots` (default: the pinned ones, AMD's from
    `attestation.amd_roots_dir` when set) are what every chain must end at; `shared` (default:
    none) is where replicas share evidence and collateral."""

    def __init__(self, settings: Settings, trust_levels: TrustLevels, metrics: Metrics, *,
                 clock: Callable[[], float] = time.time, transport: Transport | None = None,
                 roots: Roots | None = None, shared: SharedEvidence | None = None) -> None:
        self._states = {b.name: BackendState(b) for b in settings.backends if b.attestation}
        self._trust_levels = trust_levels
        self._metrics = metrics
        self._clock = clock
        self._network: NetworkTransport | None = None  # made here, so closed here
        if transport is None:
            transport = self._network = NetworkTransport()
        roots = roots or Roots.pinned(settings.attestation.amd_roots_dir)
        self._shared = shared
        self._fetcher = EvidenceFetcher(transport, clock)
        collateral = CollateralStore(settings.attestation, transport, clock, shared)
        self._verifier = EvidenceVerifier(roots, collateral, clock)
        self._rims = RimStore(collateral.rim, roots.nvidia_rim, clock, ocsp=collateral.ocsp)
        self._jwks = JwksCache(transport, clock)
        self._tasks: list[asyncio.Task[None]] = []

    # -- the request path: lookups only ------------------------------------------------------

    def meets(self, backend: str, policy: str, levels: tuple[str, ...]) -> bool:
        """Every request asks this: a plain loop, since a generator under all() costs more
        than the lookups themselves (tests/bench/attestation_speed.py, cached-check)."""
        if not levels:
            return True
        state = self._states.get(backend)
        if state is None or state.evidence is None:
            return False
        now = self._clock()
        met = state.met
        for level in levels:  # noqa: SIM110 (all() over a generator: twice the cost)
            if met.get((policy, level), 0.0) <= now:
                return False
        return True

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
            state.evidence, state.met, state.source = None, {}, None
            state.wake.set()

    def standing(self, backend: str) -> Standing | None:
        """None: the backend is not attested (no `attestation` in its config)."""
        state = self._states.get(backend)
        if state is None:
            return None
        levels = self._trust_levels()
        now = self._clock()
        evidence = state.evidence
        return Standing(
            evidence=evidence,
            levels=tuple(LevelStanding(policy, name, state.met.get((policy, name)), tuple(
                level_problems(evidence, level, self._jwks.keys, now, self._rims.references)
                if evidence is not None and state.met.get((policy, name), 0.0) <= now
                else ())) for policy, name, level in levels),
            releases=tuple(releases_behind(evidence, levels, state.met)) if evidence else (),
            source=state.source, error=state.error, checked_at=state.checked_at,
            next_check_at=state.next_check_at)

    async def attest_now(self, backend: str, timeout_s: float) -> None:
        """Attest the backend afresh (an attestation begun after this call) and return when
        it has ended, whatever its outcome; TimeoutError if it does not end in time. KeyError:
        the backend is not attested."""
        state = self._states[backend]
        wanted = state.started + 1
        state.wake.set()
        async with asyncio.timeout(timeout_s), state.checked:
            await state.checked.wait_for(lambda: state.ended >= wanted)

    def policies_changed(self) -> None:
        """Re-evaluate at once (a level removed or tightened takes effect now), then re-attest
        (a level may name a key set not fetched yet)."""
        levels = self._trust_levels()
        for state in self._states.values():
            if state.evidence is not None:
                state.met = verdicts(state.evidence, levels, self._jwks.keys, self._clock(),
                                     self._rims.references)
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
            state.started += 1
            delay = min(settings.refresh_s, RETRY_S)
            if await self._attest(state):
                delay = self._next_check(state, settings.refresh_s)
            state.checked_at = self._clock()
            state.next_check_at = state.checked_at + delay
            async with state.checked:
                state.ended = state.started
                state.checked.notify_all()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation
            # that `close` sends when the event is set at the same moment (and close hangs).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await state.wake.wait()

    async def _attest(self, state: BackendState) -> bool:
        """One attestation; its verdict, or none at all, replaces the one held."""
        name = state.backend.name
        try:
            attested = await self._attestation(state)
        except Exception as exc:  # any failure, even a bug, means no verdict
            state.evidence, state.met, state.source = None, {}, None
            state.error = reason(exc)
            self._metrics.attestations.labels(name, "refused").inc()
            log.error("attestation_failed", backend=name, reason=state.error)  # noqa: TRY400
            return False
        state.evidence, state.met = attested.evidence, attested.met
        state.source, state.error = attested.source, None
        state.nonce = attested.received.nonce
        self._metrics.attestations.labels(name, attested.source).inc()
        releases = releases_behind(attested.evidence, self._trust_levels(), attested.met)
        log.info("attested", backend=name, digest=attested.evidence.digest,
                 source=attested.source, levels=sorted({level for _, level in attested.met}),
                 **({"releases": releases} if releases else {}))
        return True

    async def _attestation(self, state: BackendState) -> Attested:
        """Evidence for the certificate the backend presents now: another gateway's if usable,
        else the backend's own (then published for the others)."""
        presented = await self._fetcher.presented(state.backend)
        levels = self._trust_levels()
        await self._jwks.refresh(key_set_urls(levels))
        adopted = await self._adopt(state, presented, levels)
        if adopted is not None:
            return adopted
        received = await self._fetcher.fetch(state.backend, presented)
        evidence, met = await self._evaluate(state.backend.name, presented, received, levels)
        if self._shared is not None:
            await self._shared.publish(state.backend.name, presented.sha256, received,
                                       self._refresh_s(state))
        return Attested(received, evidence, met, "verified")

    async def _adopt(self, state: BackendState, presented: Presented,
                     levels: Levels) -> Attested | None:
        """Another gateway's evidence for this backend and this certificate, verified here;
        None (ask the backend) when there is none, or it is too old, or ours, or fails."""
        if self._shared is None:
            return None
        name = state.backend.name
        received = await self._shared.evidence(name, presented.sha256)
        if received is None or received.nonce == state.nonce:
            return None
        age = self._clock() - received.at
        if not -CLOCK_SKEW_S <= age < self._refresh_s(state):
            return None
        try:
            evidence, met = await self._evaluate(name, presented, received, levels)
        except Exception as exc:  # whatever it is, our own evidence decides
            log.warning("shared_evidence_refused", backend=name, reason=reason(exc))
            return None
        now = self._clock()
        if any(met.get(level, 0.0) <= now for level in verdicts(
                replace(evidence, verified_at=now), levels, self._jwks.keys, now,
                self._rims.references)):
            return None  # too old for a level in force: evidence of our own would meet it
        return Attested(received, evidence, met, "shared")

    async def _evaluate(self, backend: str, presented: Presented, received: Received,
                        levels: Levels) -> tuple[Evidence, Met]:
        """Verify the evidence bound to this certificate and its nonce; a level's max age
        counts from when the nonce was sent, whoever sent it."""
        verified = await self._verifier.verify(presented.bind(received))
        evidence = replace(verified, verified_at=min(verified.verified_at, received.at))
        if evidence.gpus:
            await self._rims.refresh([gpu.evidence for gpu in evidence.gpus],
                                     rim_sources(levels))
        now = self._clock()
        met = verdicts(evidence, levels, self._jwks.keys, now, self._rims.references)
        for policy, name, level in levels:
            problems = [] if (policy, name) in met else gpu_level_problems(
                evidence, level, now, self._rims.references)
            if problems:  # which GPU of the machine keeps it from the level
                log.warning("gpu_level_not_met", backend=backend, level=name,
                            reasons=problems)
        return evidence, met

    @staticmethod
    def _refresh_s(state: BackendState) -> float:
        settings = state.backend.attestation
        assert settings is not None  # noqa: S101 (only attested backends have a state)
        return settings.refresh_s

    def _next_check(self, state: BackendState, refresh_s: float) -> float:
        """Re-attest every `refresh_s`, and early enough that no level lapses in between
        (10% of the remaining time, at least 1 s, before the first expiry)."""
        if not state.met:
            return refresh_s
        remaining = min(state.met.values()) - self._clock()
        return max(1.0, min(refresh_s, remaining * 0.9))


def reason(exc: Exception) -> str:
    """Why an attestation failed, as logs and the studio show it: an EvidenceError's message
    (written to be shown: no secrets, URLs without user info or query), else only the type."""
    return str(exc) if isinstance(exc, EvidenceError) else type(exc).__name__
