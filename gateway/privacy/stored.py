"""Responses the upstream stores (`/v1/responses` with `store` not false): which tenant created
each, through which backend, and the placeholder mapping its request was masked with.

Upstreams store responses under the gateway's own credential, so without this record any
tenant could read any other tenant's response by id. With it: reading one back (`GET
/v1/responses/{id}`, its input items) restores it with the mapping it was made with,
continuing one (`previous_response_id`) keeps its placeholders meaning the same values (turn
1's `<PERSON_1>` is still John in turn 2), and both work only for the tenant that created it.

The mappings hold original values, so they are kept encrypted (AES-256-GCM, the response id,
tenant and backend as associated data) under a key that exists only in this process's memory,
and expire after `privacy.stored_response_ttl_s`. One process's record is its own: with
several workers or replicas a response is known only where it was created, unless
`state.redis_url` and `state.vault_key_env` share them (`gateway/state/stored_responses.py`).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.privacy.vault import Entry


@dataclass(frozen=True)
class StoredResponse:
    tenant: str
    backend: str
    entries: list[Entry]


class ResponseStore(Protocol):
    """Where the records live: this process (`StoredResponses`) or Redis, for every replica."""

    async def remember(self, response_id: str, tenant: str, backend: str,
                       entries: list[Entry]) -> None: ...

    async def get(self, response_id: str, tenant: str) -> StoredResponse | None: ...

    async def forget(self, response_id: str) -> None: ...


T = TypeVar("T")


class Expiring(Generic[T]):
    """Records by id, each dropped `ttl_s` after it was put (or `touch`ed), the oldest first
    past `capacity`: memory stays bounded whatever clients create."""

    def __init__(self, ttl_s: float, capacity: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl_s
        self._capacity = capacity
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def get(self, key: str) -> T | None:
        self._expire()
        found = self._items.get(key)
        return None if found is None else found[1]

    def put(self, key: str, record: T) -> None:
        self._items[key] = (self._clock() + self._ttl, record)
        self._items.move_to_end(key)
        self._expire()

    def touch(self, key: str) -> None:
        found = self._items.get(key)
        if found is not None:
            self.put(key, found[1])

    def pop(self, key: str) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self) -> None:
        now = self._clock()
        while self._items:
            oldest, (expires, _) = next(iter(self._items.items()))
            if expires > now and len(self._items) <= self._capacity:
                break
            del self._items[oldest]


@dataclass(frozen=True)
class _Sealed:
    tenant: str
    backend: str
    blob: bytes  # nonce + AES-GCM(entries)


class StoredResponses:
    def __init__(self, ttl_s: float, capacity: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._items: Expiring[_Sealed] = Expiring(ttl_s, capacity, clock)

    async def remember(self, response_id: str, tenant: str, backend: str,
                       entries: list[Entry]) -> None:
        nonce = os.urandom(12)
        blob = nonce + self._aead.encrypt(nonce, orjson.dumps(entries),
                                          aad(response_id, tenant, backend))
        self._items.put(response_id, _Sealed(tenant, backend, blob))

    async def get(self, response_id: str, tenant: str) -> StoredResponse | None:
        """The record, if this tenant created that response and it has not expired."""
        sealed = self._items.get(response_id)
        if sealed is None or sealed.tenant != tenant:
            return None
        try:
            plain = self._aead.decrypt(sealed.blob[:12], sealed.blob[12:],
                                       aad(response_id, sealed.tenant, sealed.backend))
        except InvalidTag:
            return None
        entries = [(str(p), str(e), str(v)) for p, e, v in orjson.loads(plain)]
        return StoredResponse(sealed.tenant, sealed.backend, entries)

    async def forget(self, response_id: str) -> None:
        self._items.pop(response_id)

    def __len__(self) -> int:
        return len(self._items)


def aad(response_id: str, tenant: str, backend: str) -> bytes:
    return orjson.dumps([response_id, tenant, backend])
