"""`veil keys serve`: release the gateway's keys only to a gateway that proves what it runs.

Meant for a trust domain of its own (another host, another operator): it holds the keys sealed
(sealed_store.py), hands out single-use nonces, and for each release request verifies the
gateway's evidence exactly as a gateway verifies a backend's: the same verifier (roots, VCEK,
CRLs, Intel collateral: attestation/evidence.py with collateral.py), bound to this exchange
(release.py), then the trust level of its policy file (attestation/verdicts.py). Only then
does it answer, with the keys encrypted to the gateway's ephemeral key under a key only it
(holding its identity key) could have made.

A refusal is a 403 whose reason says which step failed, never more (the detail, which would
help whoever tries to forge, goes to this service's log); a 503 when the service could not
judge (AMD KDS or Intel PCS unreachable, the token gone): the gateway may try again. Every
decision is logged: the keys asked for, the gateway's TLS key and evidence digest, granted or
why not; never key material.
"""

from __future__ import annotations

import hashlib
import secrets
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.attestation.binding import spki_sha256
from gateway.attestation.collateral import CollateralStore
from gateway.attestation.evidence import MAX_EVIDENCE_BYTES, Evidence, EvidenceVerifier, Fetched
from gateway.attestation.jwks import JwksCache
from gateway.attestation.levels import TrustLevel
from gateway.attestation.transport import NetworkTransport, Transport
from gateway.attestation.trust_roots import Roots
from gateway.attestation.verdicts import key_set_urls, level_met
from gateway.client.verify import level_problems
from gateway.errors import (
    CustodyError,
    EvidenceError,
    FetchError,
    KeyUnavailable,
    ReleaseRefused,
    TokenError,
)
from gateway.fhe.keys import read_master_key
from gateway.keys.material import Sealer, TokenSealer
from gateway.keys.release import (
    CHALLENGE_PATH,
    IDENTITY,
    NONCE_BYTES,
    RELEASE_PATH,
    decoded,
    release_binding,
    seal_keys,
)
from gateway.keys.sealed_store import SealedStore
from gateway.keys.service_config import KeyServiceSettings
from gateway.keys.token import Token
from gateway.observability.logging import get_logger

log = get_logger("veil.keys.service")


@dataclass(frozen=True)
class Request:
    nonce: bytes
    names: list[str]
    certificate: bytes  # DER
    ephemeral_key: bytes
    evidence: list[Any]


class KeyService:
    def __init__(self, settings: KeyServiceSettings, level: TrustLevel, store: SealedStore, *,
                 transport: Transport, roots: Roots,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._level = level
        self._store = store
        self._clock = clock
        self._verifier = EvidenceVerifier(
            roots, CollateralStore(settings.attestation, transport, clock), clock)
        self._jwks = JwksCache(transport, clock)
        self._challenges: dict[bytes, float] = {}  # nonce -> lapses at

    async def challenge(self, _: web.Request) -> web.Response:
        now = self._clock()
        self._challenges = {n: t for n, t in self._challenges.items() if t > now}
        if len(self._challenges) >= self._settings.max_challenges:
            log.warning("key_challenge_refused", reason="too many outstanding challenges")
            return web.json_response({"error": "too many outstanding challenges"}, status=503)
        nonce = secrets.token_bytes(NONCE_BYTES)
        self._challenges[nonce] = now + self._settings.challenge_ttl_s
        return web.json_response({"nonce": nonce.hex(), "ttl_s": self._settings.challenge_ttl_s})

    async def release(self, request: web.Request) -> web.Response:
        asked: dict[str, Any] = {"peer": request.remote}
        try:
            wanted = parsed(await request.read(), self._settings.keys)
            asked.update(keys=wanted.names,
                         tls_key_sha256=_key_sha256(wanted.certificate).hex())
            self._consume(wanted.nonce)
            evidence = await self._verified(wanted)
            asked["evidence"] = evidence.digest
            await self._meets(evidence)
            keys = self._store.open([*wanted.names, IDENTITY])
            identity = X25519PrivateKey.from_private_bytes(keys.pop(IDENTITY))
            reply = _sealed(wanted, keys, identity)
        except ReleaseRefused as refused:
            log.warning("key_release_refused", reason=refused.detail, **asked)
            return web.json_response({"error": refused.reason}, status=refused.status)
        except (CustodyError, TokenError, KeyUnavailable) as exc:
            log.error("key_release_failed",  # noqa: TRY400 (no traceback in the log)
                      reason=str(exc), **asked)
            return web.json_response({"error": "the key store is unavailable"}, status=503)
        log.info("key_release_granted", level=self._settings.level, **asked)
        return web.json_response(reply)

    def _consume(self, nonce: bytes) -> None:
        """Single use: the first release naming a nonce ends it, granted or not."""
        lapses = self._challenges.pop(nonce, None)
        if lapses is None or lapses <= self._clock():
            raise ReleaseRefused(403, "unknown, used or expired nonce: ask for a new challenge")

    async def _verified(self, wanted: Request) -> Evidence:
        bound = release_binding(wanted.nonce, _key_sha256(wanted.certificate),
                                wanted.ephemeral_key)
        fetched = Fetched(orjson.dumps({"evidence": wanted.evidence}), bound,
                          hashlib.sha256(wanted.certificate).digest())
        try:
            return await self._verifier.verify(fetched)
        except FetchError as exc:  # AMD KDS, Intel PCS: not the gateway's fault, nor a verdict
            raise ReleaseRefused(503, "what verifying the evidence needs could not be "
                                      "fetched: try again", str(exc)) from None
        except EvidenceError as exc:
            raise ReleaseRefused(403, "the evidence does not verify, or is not bound to this "
                                      "exchange", str(exc)) from None

    async def _meets(self, evidence: Evidence) -> None:
        level = self._level
        await self._jwks.refresh(key_set_urls([("", self._settings.level, level)]))
        if level_met(evidence, level, self._jwks.keys, self._clock()) is None:
            problems = level_problems(evidence, level)
            raise ReleaseRefused(403, f"the evidence does not meet trust level "
                                      f"{self._settings.level!r}",
                                 "; ".join(problems) or "the level is not met")


SERVICE = web.AppKey("key_service", KeyService)


def _sealed(wanted: Request, keys: dict[str, bytes],
            identity: X25519PrivateKey) -> dict[str, Any]:
    try:
        return seal_keys(wanted.ephemeral_key, wanted.nonce, keys, identity)
    except ValueError:  # a low-order point: no shared secret
        raise ReleaseRefused(400, "ephemeral_key: not a usable X25519 public key") from None


def parsed(body: bytes, released: Sequence[str]) -> Request:
    """The release request, every field checked; 400 for one malformed, 403 for keys this
    service does not release."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ReleaseRefused(400, "the request is not JSON") from None
    if not isinstance(document, dict):
        raise ReleaseRefused(400, "the request is not a JSON object")
    try:
        nonce = bytes.fromhex(document.get("nonce", ""))
    except (TypeError, ValueError):
        nonce = b""
    names = document.get("keys")
    if len(nonce) != NONCE_BYTES:
        raise ReleaseRefused(400, "nonce must be 64 hex digits")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names) \
            or len(set(names)) != len(names):
        raise ReleaseRefused(400, "keys must be a list of distinct key names")
    if any(n not in released for n in names):
        raise ReleaseRefused(403, f"this service releases only {', '.join(released)}")
    evidence = document.get("evidence")
    if not isinstance(evidence, list) or not evidence:
        raise ReleaseRefused(400, "evidence must be a list of evidence parts")
    try:
        certificate = decoded(document.get("certificate"), "certificate")
        _key_sha256(certificate)
        ephemeral = decoded(document.get("ephemeral_key"), "ephemeral_key", 32)
    except EvidenceError as exc:
        raise ReleaseRefused(400, str(exc)) from None
    return Request(nonce, sorted(names), certificate, ephemeral, evidence)


def _key_sha256(certificate: bytes) -> bytes:
    try:
        return spki_sha256(certificate)
    except ValueError:
        raise ReleaseRefused(400, "certificate: not a DER X.509 certificate") from None


def store_sealer(settings: KeyServiceSettings, token: Token | None) -> Sealer:
    """What seals the store: the token's AES key, else the master key in memory."""
    store = settings.store
    if store.master_key_hsm_label:
        if token is None:
            raise TokenError("the store's master key is in the token: no hsm section")
        return TokenSealer(token, store.master_key_hsm_label)
    return AESGCM(read_master_key(store.master_key_env, store.master_key_file))


def build_service_app(settings: KeyServiceSettings, level: TrustLevel, store: SealedStore, *,
                      transport: Transport | None = None, roots: Roots | None = None,
                      clock: Callable[[], float] = time.time) -> web.Application:
    """`transport` (default: the network) and `roots` (default: the pinned ones, AMD's from
    `attestation.amd_roots_dir`) as for the gateway's AttestationService."""
    missing = [name for name in [*settings.keys, IDENTITY] if name not in store.names()]
    if missing:
        raise CustodyError(f"the key store holds no {', '.join(missing)} key: run "
                           "`veil keys seal --config` first")
    store.open([*settings.keys, IDENTITY])  # every key opens now, not at the first request
    network: NetworkTransport | None = None  # made here, so closed here
    if transport is None:
        transport = network = NetworkTransport()
    service = KeyService(settings, level, store, transport=transport,
                         roots=roots or Roots.pinned(settings.attestation.amd_roots_dir),
                         clock=clock)
    app = web.Application(client_max_size=MAX_EVIDENCE_BYTES + 64 * 1024)
    app[SERVICE] = service
    app.router.add_post(CHALLENGE_PATH, service.challenge)
    app.router.add_post(RELEASE_PATH, service.release)

    if network is not None:
        async def closed(_: web.Application) -> None:
            await network.close()

        app.on_cleanup.append(closed)
    return app


def service_tls(settings: KeyServiceSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.listen.tls_cert_file, settings.listen.tls_key_file)
    return context
