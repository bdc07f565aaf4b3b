"""Conversation records in Redis, so that every replica masks a conversation's next request
with the mapping of everything sent into it so far, and restores its replies.

What Redis holds per conversation: under `veil:conversation:<HMAC(conversation id)>`, a hash of
a random version and the backend's name beside the placeholder mapping sealed with AES-256-GCM
(id, tenant and backend as associated data), expiring `privacy.conversation_ttl_s` after last
use. Keys are derived (HKDF) from the secret in `state.vault_key_env`. Someone who reads Redis
learns how many conversations there are, how often each grows and through which backend; not
the ids, the tenants or any value. A write names the version it grew from and is refused by a
Lua script if another write came first, so two replicas never give two values one placeholder.
Someone who can write Redis can make a conversation unknown, or roll its mapping back to an
older one (placeholders added since are then left unrestored, never restored wrongly); they
cannot make a value restore where another was sent.

When Redis cannot be reached a request into a conversation is refused (503 `vault_unavailable`)
before anything is forwarded.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import VaultUnavailable
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.privacy.conversations import Conversation, seal, unseal
from gateway.privacy.vault import Entry
from gateway.state.redis_store import derived_keys

log = get_logger("veil.conversations")
PREFIX = "veil:conversation:"
# KEYS[1]: the record; ARGV: the version replaced ('' for a new conversation), the new
# version, the record, the TTL in ms. 1 if written, 0 if the version was not the current one.
PUT = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'r', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
# Read and keep alive: a conversation in use does not expire.
GET = """
local found = redis.call('HMGET', KEYS[1], 'v', 'r')
if found[1] then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return found
"""


class SharedConversations:
    def __init__(self, redis: Redis, secret: bytes, ttl_s: float, timeout_s: float,
                 metrics: Metrics) -> None:
        seal_key, self._name_key = derived_keys(secret, b"veil conversations v1")
        self._aead = AESGCM(seal_key)
        self._put = redis.register_script(PUT)
        self._get = redis.register_script(GET)
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._timeout = timeout_s
        self._metrics = metrics

    async def get(self, conversation_id: str, tenant: str) -> Conversation | None:
        try:
            async with asyncio.timeout(self._timeout):
                version, raw = await self._get(keys=[self._name(conversation_id)],
                                               args=[self._ttl_ms])
        except UnicodeDecodeError:  # not text, so not a record we wrote: planted
            log.warning("conversation_record_malformed")
            return None
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(exc) from None
        if version is None or raw is None:
            return None
        try:
            record = orjson.loads(raw)
            backend, blob = str(record["backend"]), bytes.fromhex(record["sealed"])
        except (ValueError, KeyError, TypeError):  # not a record we wrote: planted or damaged
            log.warning("conversation_record_malformed")
            return None
        entries = unseal(self._aead, blob, conversation_id, tenant, backend)
        if entries is None:
            return None  # another tenant's (or altered): not found
        return Conversation(tenant, backend, entries, str(version))

    async def put(self, conversation_id: str, tenant: str, backend: str,
                  entries: list[Entry], replacing: str | None) -> bool:
        blob = seal(self._aead, conversation_id, tenant, backend, entries)
        record = orjson.dumps({"backend": backend, "sealed": blob.hex()})
        try:
            async with asyncio.timeout(self._timeout):
                written = await self._put(keys=[self._name(conversation_id)],
                                          args=[replacing or "", secrets.token_hex(8), record,
                                                self._ttl_ms])
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(exc) from None
        return bool(int(written))

    async def forget(self, conversation_id: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.delete(self._name(conversation_id))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)  # it expires with its TTL

    def _name(self, conversation_id: str) -> str:
        return PREFIX + hmac.new(self._name_key, conversation_id.encode(),
                                 hashlib.sha256).hexdigest()

    def _failed(self, exc: BaseException) -> VaultUnavailable:
        self._metrics.state_failures.labels("conversations").inc()
        log.warning("conversations_unavailable", error=type(exc).__name__)
        return VaultUnavailable()
