"""Stored-response records in Redis, so that every replica can read back and continue a
response another created (`GET /v1/responses/{id}`, `previous_response_id`), restoring with the
mapping it was masked with.

What Redis holds per response: under `veil:response:<HMAC(response id)>`, the backend's name and
the placeholder mapping sealed with AES-256-GCM (the response id, tenant and backend as
associated data), expiring after `privacy.stored_response_ttl_s`. Both keys are derived (HKDF)
from the secret in `state.vault_key_env`, which only the gateways hold. Someone who reads Redis
learns how many responses are stored, for how long, and through which backend; not the ids, the
tenants or any value. A record read under another tenant fails authentication and is not found.

When Redis cannot be reached the request that needs a record is refused (503
`vault_unavailable`): a mapping that cannot be read must never be guessed, and a continuation
without it would restore the wrong values.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import VaultUnavailable
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.privacy.stored import StoredResponse, aad
from gateway.privacy.vault import Entry
from gateway.state.redis_store import derived_keys

log = get_logger("veil.stored")
PREFIX = "veil:response:"


class SharedStoredResponses:
    def __init__(self, redis: Redis, secret: bytes, ttl_s: float, timeout_s: float,
                 metrics: Metrics) -> None:
        seal_key, self._name_key = derived_keys(secret, b"veil stored responses v1")
        self._aead = AESGCM(seal_key)
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._timeout = timeout_s
        self._metrics = metrics

    async def remember(self, response_id: str, tenant: str, backend: str,
                       entries: list[Entry]) -> None:
        """Best effort: the response has reached the client already. If it cannot be stored,
        reading it back or continuing it later is refused, never restored wrongly."""
        nonce = os.urandom(12)
        blob = nonce + self._aead.encrypt(nonce, orjson.dumps(entries),
                                          aad(response_id, tenant, backend))
        record = orjson.dumps({"backend": backend, "sealed": blob.hex()})
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(self._name(response_id), record, px=self._ttl_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)

    async def get(self, response_id: str, tenant: str) -> StoredResponse | None:
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.get(self._name(response_id))
        except UnicodeDecodeError:  # not text, so not a record we wrote: planted
            log.warning("stored_response_malformed")
            return None
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise VaultUnavailable from None
        if raw is None:
            return None
        try:
            record = orjson.loads(raw)
            backend, blob = str(record["backend"]), bytes.fromhex(record["sealed"])
            plain = self._aead.decrypt(blob[:12], blob[12:], aad(response_id, tenant, backend))
        except InvalidTag:
            return None  # another tenant's (or altered): not found, as if it did not exist
        except (ValueError, KeyError, TypeError):  # not a record we wrote: planted or damaged
            log.warning("stored_response_malformed")
            return None
        entries = [(str(p), str(e), str(v)) for p, e, v in orjson.loads(plain)]
        return StoredResponse(tenant, backend, entries)

    async def forget(self, response_id: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.delete(self._name(response_id))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)  # it expires with its TTL

    def _name(self, response_id: str) -> str:
        return PREFIX + hmac.new(self._name_key, response_id.encode(), hashlib.sha256).hexdigest()

    def _failed(self, exc: BaseException) -> None:
        self._metrics.state_failures.labels("stored_responses").inc()
        log.warning("stored_responses_unavailable", error=type(exc).__name__)
