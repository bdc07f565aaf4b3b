"""Attest backends and remember which trust levels each one meets.

For every backend with `attestation` in config, a background task: read the TLS certificate the
backend presents, send a fresh nonce to its evidence endpoint over a connection pinned to that
certificate, verify each evidence part, and evaluate it against every trust level of every
policy in force. What a request needs is then a dictionary lookup: (policy digest, level) ->
until when it is met. Verdicts expire at the earliest of the level's max age, the endorsement
certificate's and token's expiry; the backend is re-attested every `refresh_s`, at once when its
TLS certificate changes (the pinned connection refuses it) and when policies are reloaded.

Evidence protocol (documented in the README):
    GET <backend origin><evidence_path>?nonce=<64 hex digits>
    200 {"evidence": [{"format": "sev-snp", "report": <base64>, "vcek": <base64 DER>},
                      {"format": "tdx", "quote": <base64>, "collateral": {...}},
                      {"format": "nvidia-gpu", "evidence": <hex SPDM request+response>,
                       "certificates": <PEM chain>},
                      {"format": "token", "token": <JWT>}]}
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from cryptography import x509

from gateway.attestation.binding import binding, peer_certificate, spki_sha256
from gateway.attestation.collateral import CollateralStore
from gateway.attestation.errors import EvidenceError
from gateway.attestation.levels import (
    TrustLevel,
    gpu_problems,
    snp_problems,
    tdx_problems,
    token_problems,
)
from gateway.attestation.nvidia import GpuEvidence, verify_gpu_evidence
from gateway.attestation.snp import (
    AmdRoots,
    VerifiedSnp,
    amd_roots,
    parse_report,
    verify_report,
)
from gateway.attestation.tdx import (
    VerifiedTdx,
    collateral_from_dir,
    collateral_from_json,
    parse_quote,
    verify_quote,
)
from gateway.attestation.tokens import verify_token
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.settings import BackendSettings, Settings
from gateway.streams import BodyTooLarge, read_at_most

log = get_logger("veil.attestation")
MAX_EVIDENCE_BYTES = 256 * 1024
JWKS_TTL_S = 3600.0


@dataclass(frozen=True)
class Evidence:
    """Verified parts of one backend's evidence, bound to its key and this gateway's nonce."""

    snp: VerifiedSnp | None
    tdx: VerifiedTdx | None
    gpu: GpuEvidence | None
    tokens: tuple[str, ...]  # checked per trust level: each level names its issuer and keys
    expected_nonce: str  # hex binding a token's nonce claim must carry
    certificate_sha256: bytes
    verified_at: float
    digest: str  # what the audit trail records

    def not_after(self) -> float:
        """The endorsement certificate's end (SNP), Intel's collateral's nextUpdate (TDX)."""
        ends = [self.snp.not_after.timestamp()] if self.snp else []
        ends += [self.tdx.next_update.timestamp()] if self.tdx else []
        return min(ends, default=float("inf"))


@dataclass
class BackendState:
    backend: BackendSettings
    evidence: Evidence | None = None
    met: dict[tuple[str, str], float] = field(default_factory=dict)  # -> expires at
    wake: asyncio.Event = field(default_factory=asyncio.Event)


TrustLevels = Callable[[], list[tuple[str, str, TrustLevel]]]  # (policy digest, name, level)


class AttestationService:
    def __init__(self, settings: Settings, trust_levels: TrustLevels, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self._states = {b.name: BackendState(b) for b in settings.backends if b.attestation}
        self._trust_levels = trust_levels
        self._metrics = metrics
        self._clock = clock
        self._roots_dir = settings.attestation.amd_roots_dir
        self._collateral_dir = settings.attestation.intel_collateral_dir
        root_file = settings.attestation.intel_root_file
        self._intel_root = x509.load_pem_x509_certificate(Path(root_file).read_bytes()) \
            if root_file else None
        gpu_root = settings.attestation.nvidia_root_file
        self._nvidia_root = x509.load_pem_x509_certificate(Path(gpu_root).read_bytes()) \
            if gpu_root else None
        self._jwks: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._settings = settings.attestation
        self._store: CollateralStore | None = None
        self._session: aiohttp.ClientSession | None = None

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
        for state in self._states.values():
            if state.evidence is not None:
                state.met = self._evaluate(state.evidence)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._states:
            return
        self._session = aiohttp.ClientSession(trust_env=False)
        self._store = CollateralStore(self._settings, self._session, self._clock)
        self._tasks = [asyncio.create_task(self._keep_attested(state))
                       for state in self._states.values()]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    async def _keep_attested(self, state: BackendState) -> None:
        settings = state.backend.attestation
        assert settings is not None  # noqa: S101 (only attested backends have a state)
        while True:
            state.wake.clear()
            try:
                evidence = await self.attest(state.backend)
            except (EvidenceError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                state.evidence, state.met = None, {}
                self._metrics.attestations.labels(state.backend.name, "refused").inc()
                log.error("attestation_failed", backend=state.backend.name,  # noqa: TRY400
                          reason=str(exc) if isinstance(exc, EvidenceError)
                          else type(exc).__name__)
                delay = min(settings.refresh_s, 5.0)
            else:
                state.evidence, state.met = evidence, self._evaluate(evidence)
                self._metrics.attestations.labels(state.backend.name, "verified").inc()
                log.info("attested", backend=state.backend.name, digest=evidence.digest,
                         levels=sorted({level for _, level in state.met}))
                delay = self._next_check(state, settings.refresh_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), delay)

    def _next_check(self, state: BackendState, refresh_s: float) -> float:
        """Re-attest every `refresh_s`, and early enough that no level lapses in between
        (10% of the remaining time, at least 1 s, before the first expiry)."""
        if not state.met:
            return refresh_s
        remaining = min(state.met.values()) - self._clock()
        return max(1.0, min(refresh_s, remaining * 0.9))

    # -- one attestation ------------------------------------------------------------------------

    async def attest(self, backend: BackendSettings) -> Evidence:
        settings = backend.attestation
        if settings is None or self._session is None:
            raise EvidenceError(f"backend {backend.name} is not set up for attestation")
        origin = urlsplit(backend.url)
        host, port = origin.hostname or "", origin.port or 443
        certificate = await peer_certificate(host, port, settings.timeout_s)
        nonce = secrets.token_bytes(32)
        expected = binding(nonce, spki_sha256(certificate))
        url = f"{origin.scheme}://{origin.netloc}{settings.evidence_path}"
        pinned = aiohttp.Fingerprint(hashlib.sha256(certificate).digest())
        async with self._session.get(url, params={"nonce": nonce.hex()}, ssl=pinned,
                                     timeout=aiohttp.ClientTimeout(total=settings.timeout_s),
                                     allow_redirects=False) as response:
            if response.status != 200:
                raise EvidenceError(f"evidence endpoint answered {response.status}")
            try:
                body = await read_at_most(response.content, MAX_EVIDENCE_BYTES)
            except BodyTooLarge:
                raise EvidenceError("evidence larger than 256 KiB") from None
        await self._refresh_jwks()
        return await self._verify(body, expected, hashlib.sha256(certificate).digest())

    async def _verify(self, body: bytes, expected: bytes, certificate_sha256: bytes) -> Evidence:
        parts = _parts(body)
        snp: VerifiedSnp | None = None
        tdx: VerifiedTdx | None = None
        gpu: GpuEvidence | None = None
        tokens: list[str] = []
        for part in parts:
            kind = part.get("format")
            if kind == "sev-snp":
                snp = await self._verify_snp(part, expected)
            elif kind == "tdx":
                tdx = await self._verify_tdx(part, expected)
            elif kind == "nvidia-gpu":
                gpu = self._verify_gpu(part, expected)
            elif kind == "token" and isinstance(part.get("token"), str):
                tokens.append(part["token"])
            else:
                raise EvidenceError(f"unsupported evidence part {kind!r}")
        values = {"snp": snp.values() if snp else None, "tdx": tdx.values() if tdx else None,
                  "gpu": {str(i): v.hex() for i, v in gpu.measurements.items()} if gpu else None,
                  "tokens": len(tokens),
                  "certificate_sha256": certificate_sha256.hex()}
        digest = "sha256:" + hashlib.sha256(orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
                                            ).hexdigest()
        return Evidence(snp=snp, tdx=tdx, gpu=gpu, tokens=tuple(tokens),
                        expected_nonce=expected.hex(), certificate_sha256=certificate_sha256,
                        verified_at=self._clock(), digest=digest)

    async def _verify_snp(self, part: Mapping[str, Any], expected: bytes) -> VerifiedSnp:
        try:
            report = base64.b64decode(part["report"], validate=True)
            vcek = base64.b64decode(part["vcek"], validate=True) if part.get("vcek") else None
        except (KeyError, TypeError, binascii.Error):
            raise EvidenceError("sev-snp evidence needs a base64 'report' (and 'vcek', unless "
                                "the gateway fetches it from AMD KDS)") from None
        if vcek is None:
            vcek = await self._collateral().vcek(parse_report(report))
        at = datetime.fromtimestamp(self._clock(), UTC)
        roots: dict[str, AmdRoots] = amd_roots(self._roots_dir)
        verified = verify_report(report, vcek, at=at, roots=roots)
        if verified.report.report_data != expected:
            raise EvidenceError("sev-snp: report_data is not bound to this nonce and TLS key "
                                "(a replayed report, or evidence from another machine)")
        return verified

    async def _verify_tdx(self, part: Mapping[str, Any], expected: bytes) -> VerifiedTdx:
        try:
            raw = base64.b64decode(part["quote"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise EvidenceError("tdx evidence needs a base64 'quote'") from None
        quote = parse_quote(raw)
        if isinstance(part.get("collateral"), dict):
            collateral = collateral_from_json(part["collateral"])
        elif self._collateral_dir:
            collateral = collateral_from_dir(Path(self._collateral_dir), quote)
        else:
            collateral = await self._collateral().tdx(quote)
        verified = verify_quote(raw, collateral, at=datetime.fromtimestamp(self._clock(), UTC),
                                root=self._intel_root)
        if verified.quote.report.report_data != expected:
            raise EvidenceError("tdx: report_data is not bound to this nonce and TLS key "
                                "(a replayed quote, or evidence from another machine)")
        return verified

    def _collateral(self) -> CollateralStore:
        if self._store is None:
            raise EvidenceError("attestation service is not running")
        return self._store

    def _verify_gpu(self, part: Mapping[str, Any], expected: bytes) -> GpuEvidence:
        try:
            raw = bytes.fromhex(str(part["evidence"]))
            chain = str(part["certificates"]).encode()
        except (KeyError, ValueError):
            raise EvidenceError("nvidia-gpu evidence needs hex 'evidence' and PEM "
                                "'certificates'") from None
        # The agent asks the GPU with the first 32 bytes of the binding as the SPDM nonce.
        return verify_gpu_evidence(raw, chain, expected_nonce=expected[:32],
                                   at=datetime.fromtimestamp(self._clock(), UTC),
                                   root=self._nvidia_root)

    def _evaluate(self, evidence: Evidence) -> dict[tuple[str, str], float]:
        met: dict[tuple[str, str], float] = {}
        for policy, name, level in self._trust_levels():
            until = self._level_met(evidence, level)
            if until is not None:
                met[(policy, name)] = until
        return met

    def _level_met(self, evidence: Evidence, level: TrustLevel) -> float | None:
        """Until when the evidence meets the level, or None. Every kind listed must hold."""
        until = min(evidence.verified_at + level.max_age_s, evidence.not_after())
        if not _hardware_meets(evidence, level):
            return None
        if level.token is not None:
            wanted, jwks = level.token, self._jwks.get(level.token.jwks_url)
            if jwks is None:
                return None
            for token in evidence.tokens:
                try:
                    verified = verify_token(token, jwks[1], issuer=wanted.issuer,
                                            now=self._clock(), max_age_s=level.max_age_s,
                                            nonce_claim=wanted.nonce_claim,
                                            expected_nonce=evidence.expected_nonce,
                                            algorithms=tuple(wanted.algorithms))
                except EvidenceError:
                    continue
                if not token_problems(verified, wanted):
                    return min(until, verified.expires_at)
            return None
        return until

    async def _refresh_jwks(self) -> None:
        """Key sets from the URLs the policies name (never from a token's own headers)."""
        assert self._session is not None  # noqa: S101
        urls = {level.token.jwks_url for _, _, level in self._trust_levels() if level.token}
        for url in urls:
            cached = self._jwks.get(url)
            if cached and self._clock() - cached[0] < JWKS_TTL_S:
                continue
            try:
                async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=10),
                                             allow_redirects=False) as response:
                    response.raise_for_status()
                    keys = orjson.loads(await read_at_most(response.content,
                                                           MAX_EVIDENCE_BYTES))
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError,
                    BodyTooLarge) as exc:
                log.error("jwks_fetch_failed", url=url,  # noqa: TRY400
                          error_type=type(exc).__name__)
                continue
            if isinstance(keys, dict):
                self._jwks[url] = (self._clock(), keys)


def _hardware_meets(evidence: Evidence, level: TrustLevel) -> bool:
    if level.sev_snp is not None and (
            evidence.snp is None or snp_problems(evidence.snp, level.sev_snp)):
        return False
    if level.tdx is not None and (
            evidence.tdx is None or tdx_problems(evidence.tdx, level.tdx)):
        return False
    return level.nvidia_gpu is None or (
        evidence.gpu is not None and not gpu_problems(evidence.gpu, level.nvidia_gpu))


def _parts(body: bytes) -> list[Mapping[str, Any]]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EvidenceError("evidence is not JSON") from None
    parts = document.get("evidence") if isinstance(document, dict) else None
    if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
        raise EvidenceError("evidence must be {\"evidence\": [parts...]}")
    return parts
