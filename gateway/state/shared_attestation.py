"""Attestation shared by the replicas through Redis, so that N replicas do not each ask every
backend for evidence, nor each ask AMD KDS (which rate-limits) and Intel PCS for collateral.

Redis is untrusted storage, so what is shared is never a verdict:
- `veil:attestation:<HMAC(backend, certificate sha256)>` -> the evidence document as the backend
  sent it, the nonce it was asked with and when, sealed with AES-256-GCM (backend name and
  certificate sha256 as associated data), expiring after the backend's `refresh_s`. A replica
  adopting it reads the backend's certificate itself, binds the document to that certificate
  and that nonce, verifies it against its own pinned roots and evaluates its own policies on it
  (gateway/attestation/verifier.py). The seal only vouches that a gateway asked with that nonce
  at that time: the freshness that a nonce of its own would give it.
- `veil:collateral:<HMAC(url)>` -> a VCEK, TCB Info, QE Identity or CRL as AMD KDS / Intel PCS
  served it, its issuer chain and until when it may be used, sealed the same way (the URL as
  associated data). It is public and verified on every use anyway; the seal keeps anyone who
  can write to Redis from planting garbage (a refusal) or rolling back to an older, still
  signed CRL or TCB Info, and the HMAC name keeps chip ids and TCB levels out of key names.

Both keys are derived (HKDF, their own info string) from the secret in `state.vault_key_env`,
which only the gateways hold. Sharing is an optimisation, never a trust input: Redis down, slow
(every call bounded by `state.timeout_s`) or a record that is not authentic, not well formed or
too large is logged (what, never a value), counted in `veil_state_failures_total{concern}`
(`attestation`, `collateral`), and the replica fetches on its own, as without Redis.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import math
import os

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.attestation.evidence import MAX_EVIDENCE_BYTES
from gateway.attestation.fetch import NONCE_BYTES, Received
from gateway.errors import RecordUnusable
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics

log = get_logger("veil.attestation.shared")
EVIDENCE_PREFIX = "veil:attestation:"
COLLATERAL_PREFIX = "veil:collateral:"
MAX_EVIDENCE_RECORD = 2 * MAX_EVIDENCE_BYTES  # characters read at most: base64 and JSON of it
MAX_COLLATERAL_RECORD = 8 * 1024 * 1024  # a 1 MiB body and its chain, base64 and JSON
KEEP_S = 7 * 86400  # how long Redis keeps collateral valid for good (a VCEK); disk keeps it on
IV_BYTES = 12

Collateral = tuple[bytes, bytes, float | None]  # (body, issuer chain, usable until: None: ever)


class Sealer:
    """Seals and names records for one use (the context), with keys only gateways can derive."""

    def __init__(self, secret: bytes) -> None:
        material = HKDF(algorithm=hashes.SHA256(), length=64, salt=None,
                        info=b"veil shared attestation v1").derive(secret)
        self._aead = AESGCM(material[:32])
        self._name_key = material[32:]

    def name(self, prefix: str, context: bytes) -> str:
        return prefix + hmac.new(self._name_key, context, hashlib.sha256).hexdigest()

    def seal(self, context: bytes, payload: bytes) -> str:
        iv = os.urandom(IV_BYTES)
        return base64.b64encode(iv + self._aead.encrypt(iv, payload, context)).decode()

    def open(self, context: bytes, record: str) -> bytes:
        """The payload sealed for exactly this context, or RecordUnusable."""
        try:
            blob = base64.b64decode(record, validate=True)
            return self._aead.decrypt(blob[:IV_BYTES], blob[IV_BYTES:], context)
        except (binascii.Error, ValueError):
            raise RecordUnusable("malformed") from None
        except InvalidTag:  # altered, another record's, or not sealed by a gateway
            raise RecordUnusable("unauthentic") from None


def evidence_context(backend: str, certificate_sha256: bytes) -> bytes:
    return orjson.dumps(["evidence", backend, certificate_sha256.hex()])


def collateral_context(url: str) -> bytes:
    return orjson.dumps(["collateral", url])


def encode_received(received: Received) -> bytes:
    return orjson.dumps({"body": base64.b64encode(received.body).decode(),
                         "nonce": received.nonce.hex(), "at": received.at})


def decode_received(payload: bytes) -> Received:
    """Checked even though sealed: a record is read with the same suspicion as a backend."""
    try:
        record = orjson.loads(payload)
        body = base64.b64decode(record["body"], validate=True)
        nonce, at = bytes.fromhex(record["nonce"]), float(record["at"])
    except (orjson.JSONDecodeError, binascii.Error, KeyError, TypeError, ValueError):
        raise RecordUnusable("malformed") from None
    if len(nonce) != NONCE_BYTES or len(body) > MAX_EVIDENCE_BYTES or not math.isfinite(at):
        raise RecordUnusable("malformed")
    return Received(body, nonce, at)


def encode_collateral(body: bytes, chain: bytes, until: float | None) -> bytes:
    return orjson.dumps({"body": base64.b64encode(body).decode(),
                         "chain": base64.b64encode(chain).decode(), "until": until})


def decode_collateral(payload: bytes) -> Collateral:
    try:
        record = orjson.loads(payload)
        body = base64.b64decode(record["body"], validate=True)
        chain = base64.b64decode(record["chain"], validate=True)
        until = None if record["until"] is None else float(record["until"])
    except (orjson.JSONDecodeError, binascii.Error, KeyError, TypeError, ValueError):
        raise RecordUnusable("malformed") from None
    return body, chain, until


class SharedAttestation:
    """What the attestation service and its collateral store read and write in Redis. No call
    raises for Redis or for a record: each answers None (or keeps nothing) and is counted."""

    def __init__(self, redis: Redis, secret: bytes, timeout_s: float, metrics: Metrics) -> None:
        self._redis = redis
        self._sealer = Sealer(secret)
        self._timeout = timeout_s
        self._metrics = metrics

    async def evidence(self, backend: str, certificate_sha256: bytes) -> Received | None:
        """The evidence a gateway received for this backend presenting this certificate."""
        context = evidence_context(backend, certificate_sha256)
        name = self._sealer.name(EVIDENCE_PREFIX, context)
        record = await self._read(name, MAX_EVIDENCE_RECORD, "attestation")
        if record is None:
            return None
        try:
            return decode_received(self._sealer.open(context, record))
        except RecordUnusable as exc:
            self._skipped("attestation", str(exc), backend=backend)
            return None

    async def publish(self, backend: str, certificate_sha256: bytes, received: Received,
                      ttl_s: float) -> None:
        """Best effort: unpublished, every other replica fetches its own."""
        context = evidence_context(backend, certificate_sha256)
        await self._write(self._sealer.name(EVIDENCE_PREFIX, context),
                          self._sealer.seal(context, encode_received(received)), ttl_s,
                          "attestation")

    async def collateral(self, url: str, now: float) -> Collateral | None:
        """What a gateway fetched from `url`, while still usable at `now`."""
        context = collateral_context(url)
        record = await self._read(self._sealer.name(COLLATERAL_PREFIX, context),
                                  MAX_COLLATERAL_RECORD, "collateral")
        if record is None:
            return None
        try:
            body, chain, until = decode_collateral(self._sealer.open(context, record))
        except RecordUnusable as exc:
            self._skipped("collateral", str(exc))
            return None
        return (body, chain, until) if until is None or until > now else None

    async def keep_collateral(self, url: str, body: bytes, chain: bytes, until: float | None,
                              now: float) -> None:
        ttl_s = KEEP_S if until is None else min(KEEP_S, until - now)
        if ttl_s <= 0:
            return
        context = collateral_context(url)
        await self._write(self._sealer.name(COLLATERAL_PREFIX, context),
                          self._sealer.seal(context, encode_collateral(body, chain, until)),
                          ttl_s, "collateral")

    async def _read(self, name: str, limit: int, concern: str) -> str | None:
        """At most `limit` characters (GETRANGE: a planted huge value is never read whole)."""
        try:
            async with asyncio.timeout(self._timeout):
                record = await self._redis.getrange(name, 0, limit)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(concern, exc)
            return None
        except UnicodeDecodeError:  # bytes that are no text: nothing a gateway wrote
            self._skipped(concern, "malformed")
            return None
        if not record:
            return None
        if len(record) > limit:
            self._skipped(concern, "too large")
            return None
        return str(record)

    async def _write(self, name: str, record: str, ttl_s: float, concern: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(name, record, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(concern, exc)

    def _failed(self, concern: str, exc: BaseException) -> None:
        self._metrics.state_failures.labels(concern).inc()
        log.warning("shared_attestation_unavailable", concern=concern, error=type(exc).__name__)

    def _skipped(self, concern: str, reason: str, **where: str) -> None:
        self._metrics.state_failures.labels(concern).inc()
        log.warning("shared_attestation_record_skipped", concern=concern, reason=reason, **where)
