"""Conversations the upstream keeps (OpenAI's Conversations API): which tenant created each,
through which backend, and the placeholder mapping of everything sent into it so far.

A conversation outlives the request that made it: turn 1 sent `<PERSON_1>` for John, and the
upstream still holds that when turn 5 arrives. So its mapping is kept and grows: every request
into the conversation is masked seeded with it (John stays `<PERSON_1>`, Alice, new, becomes
`<PERSON_2>`), and the grown mapping is written back *before* the request goes upstream, so a
reply from any replica can be restored. Two requests into one conversation at once must not
both call a new value `<PERSON_2>`: a write names the version it grew from and fails if another
came first (compare and set); the loser is masked again from the newer mapping.

Kept encrypted (AES-256-GCM, id, tenant and backend as associated data) under a key that exists
only in this process, for `privacy.conversation_ttl_s` after last use; with `state.redis_url`
and `state.vault_key_env`, in Redis for every replica (`gateway/state/conversations.py`).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.privacy.stored import Expiring
from gateway.privacy.vault import Entry


@dataclass(frozen=True)
class Conversation:
    tenant: str
    backend: str
    entries: list[Entry]
    version: str  # changes with every write; a write naming an older one fails


class ConversationStore(Protocol):
    async def get(self, conversation_id: str, tenant: str) -> Conversation | None: ...

    async def put(self, conversation_id: str, tenant: str, backend: str,
                  entries: list[Entry], replacing: str | None) -> bool:
        """Write the mapping; `replacing`: the version it grew from, and False if that is no
        longer the current one (None: a new conversation, written unconditionally)."""

    async def forget(self, conversation_id: str) -> None: ...


def seal(aead: AESGCM, conversation_id: str, tenant: str, backend: str,
         entries: list[Entry]) -> bytes:
    nonce = os.urandom(12)
    return nonce + aead.encrypt(nonce, orjson.dumps(entries),
                                aad(conversation_id, tenant, backend))


def unseal(aead: AESGCM, blob: bytes, conversation_id: str, tenant: str,
           backend: str) -> list[Entry] | None:
    """The entries, or None when the record is not this tenant's (or was altered)."""
    try:
        plain = aead.decrypt(blob[:12], blob[12:], aad(conversation_id, tenant, backend))
    except (InvalidTag, ValueError):  # ValueError: too short to hold a nonce
        return None
    return [(str(p), str(e), str(v)) for p, e, v in orjson.loads(plain)]


def aad(conversation_id: str, tenant: str, backend: str) -> bytes:
    return orjson.dumps(["conversation", conversation_id, tenant, backend])


@dataclass(frozen=True)
class _Sealed:
    tenant: str
    backend: str
    version: str
    blob: bytes


class Conversations:
    """This process's own records, the oldest dropped past `capacity`."""

    def __init__(self, ttl_s: float, capacity: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._items: Expiring[_Sealed] = Expiring(ttl_s, capacity, clock)

    async def get(self, conversation_id: str, tenant: str) -> Conversation | None:
        sealed = self._items.get(conversation_id)
        if sealed is None or sealed.tenant != tenant:
            return None
        entries = unseal(self._aead, sealed.blob, conversation_id, tenant, sealed.backend)
        if entries is None:
            return None
        self._items.touch(conversation_id)  # in use: kept alive
        return Conversation(tenant, sealed.backend, entries, sealed.version)

    async def put(self, conversation_id: str, tenant: str, backend: str,
                  entries: list[Entry], replacing: str | None) -> bool:
        current = self._items.get(conversation_id)
        if replacing is not None and (current is None or current.version != replacing):
            return False
        blob = seal(self._aead, conversation_id, tenant, backend, entries)
        self._items.put(conversation_id, _Sealed(tenant, backend, secrets.token_hex(8), blob))
        return True

    async def forget(self, conversation_id: str) -> None:
        self._items.pop(conversation_id)
