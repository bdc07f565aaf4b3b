"""Key epochs in the shared store (`fhe.keys_in: redis`), so that every replica encrypts under
the same epoch and a rotation made on any host is used by all.

What Redis holds:

    veil:fhe:keys      hash {key id: base64(nonce || AES-GCM(secret key))}, sealed exactly as
                       on disk: under the FHE master key, the key id as associated data
    veil:fhe:current   "<key id> <HMAC-SHA256(key id)>", the HMAC key HKDF-derived from the
                       master key

Redis never sees a secret key in clear, and only master-key holders can write a pointer that
is followed. A Redis writer can still delete epochs or replay an older genuine pointer, so a
replica never moves to an epoch older than the one it holds (key ids sort by time), and one
that starts takes the newest epoch that opens, whatever the pointer says. Writes (init, rotate)
are one compare-and-set script: two operators rotating at once cannot leave replicas split
between two "newest" epochs; the second is told to run it again.

Every call is bounded by the timeout given; a failure or timeout is `KeysUnavailable`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import CustodyError, KeysUnavailable
from gateway.fhe.keys import (
    KEY_ID,
    FheKeys,
    KeyStore,
    new_key_id,
    new_sealed_secret,
    open_sealed,
    unseal,
)
from gateway.state.redis_store import connect

KEYS = "veil:fhe:keys"
CURRENT = "veil:fhe:current"
MAX_POINTER_CHARS = 256  # "<key id> <64 hex>" is 93: more is not ours, and not read whole
MAX_SEALED_CHARS = 1024 * 1024  # a sealed key is ~270 KB in base64; never fetch a planted GB
ONE_OFF_TIMEOUT_S = 10.0

# KEYS: the hash, the pointer. ARGV[1]: the pointer as read ("" for none), ARGV[2]: the new
# pointer, then key id and sealed value pairs. Writes nothing unless the pointer is unchanged.
SWAP = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""

def pointer_key(master_key: bytes) -> bytes:
    """The HMAC key for the pointer, derived for that one use (the master key itself only
    seals)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"veil fhe current epoch v1").derive(master_key)


@dataclass(frozen=True)
class Pointer:
    """What `veil:fhe:current` says: the epoch a gateway named, or nothing we can follow
    (`refused`: something is there that no gateway wrote)."""

    raw: str
    key_id: str | None
    refused: bool = False


class RedisKeyStore:
    def __init__(self, redis: Redis, master_key: bytes, timeout_s: float) -> None:
        if len(master_key) != 32:
            raise CustodyError("the FHE master key must be 32 bytes (64 hex digits)")
        self._redis = redis
        self._aead = AESGCM(master_key)
        self._mac_key = pointer_key(master_key)
        self._timeout = timeout_s
        self._swap = redis.register_script(SWAP)

    async def pointer(self) -> Pointer:
        raw = await self._call(self._redis.getrange(CURRENT, 0, MAX_POINTER_CHARS - 1))
        text = str(raw or "")
        if not text:
            return Pointer("", None)
        key_id, _, mac = text.partition(" ")
        if KEY_ID.match(key_id) and hmac.compare_digest(mac, self._mac(key_id)):
            return Pointer(text, key_id)
        return Pointer(text, None, refused=True)

    async def current_id(self) -> str | None:
        return (await self.pointer()).key_id

    async def ids(self) -> list[str]:
        """The epochs kept, oldest first (fields that are not key ids are no epochs of ours)."""
        fields = await self._call(self._redis.hkeys(KEYS))
        return sorted(str(f) for f in fields if KEY_ID.match(str(f)))

    async def newest_id(self) -> str | None:
        """The newest epoch that opens: the hash's newest (if it opens) or the pointer's. What a
        replica starts with, and what a rotation must come after."""
        pointer, ids = await self.pointer(), await self.ids()
        if ids and (pointer.key_id is None or ids[-1] > pointer.key_id):
            try:
                unseal(self._aead, ids[-1], await self._sealed(ids[-1]))
                return ids[-1]
            except CustodyError:
                pass  # planted or damaged: the pointer's, if any, is the newest we can trust
        return pointer.key_id

    async def load(self, key_id: str) -> FheKeys:
        sealed = await self._sealed(key_id)
        return await asyncio.to_thread(open_sealed, self._aead, key_id, sealed)

    async def init(self, import_from: KeyStore | None = None) -> tuple[str, int]:
        """The first epoch: the epochs of `import_from` if it has any (the newest current),
        else a new one. Returns (current key id, epochs imported)."""
        pointer = await self.pointer()
        if pointer.raw or await self.ids():
            raise CustodyError("FHE keys already exist in Redis (use rotate)")
        imported = _importable(import_from) if import_from is not None else {}
        entries = imported or self._new_epoch(new_key_id())
        current = max(entries)
        await self._write(pointer, current, entries)
        return current, len(imported)

    async def rotate(self) -> str:
        pointer = await self.pointer()
        key_id = new_key_id(after=await self.newest_id())
        await self._write(pointer, key_id, self._new_epoch(key_id))
        return key_id

    async def show(self) -> list[dict[str, str]]:
        current = await self.current_id()
        return [{"key_id": key_id, "current": str(key_id == current).lower(),
                 "created": key_id.split("-")[1]} for key_id in await self.ids()]

    async def _write(self, expected: Pointer, current: str, entries: dict[str, bytes]) -> None:
        pairs = [item for key_id, sealed in sorted(entries.items())
                 for item in (key_id, base64.b64encode(sealed).decode())]
        written = await self._call(self._swap(keys=[KEYS, CURRENT], args=[
            expected.raw, f"{current} {self._mac(current)}", *pairs]))
        if not written:
            raise CustodyError(f"{CURRENT} changed while this ran (another rotation?) or holds "
                               "what no gateway wrote: check `veil keys show`, run it again")

    async def _sealed(self, key_id: str) -> bytes:
        if not KEY_ID.match(key_id):
            raise CustodyError("not a key id")
        size = int(await self._call(self._redis.hstrlen(KEYS, key_id)))
        if size == 0:
            raise CustodyError(f"no FHE key {key_id} in Redis")
        if size > MAX_SEALED_CHARS:
            raise CustodyError(f"FHE key {key_id} in Redis is not one a gateway wrote")
        raw = await self._call(self._redis.hget(KEYS, key_id))
        try:
            return base64.b64decode(str(raw or ""), validate=True)
        except (binascii.Error, ValueError):
            raise CustodyError(f"FHE key {key_id} in Redis is not one a gateway wrote") from None

    def _new_epoch(self, key_id: str) -> dict[str, bytes]:
        return {key_id: new_sealed_secret(self._aead, key_id)}

    def _mac(self, key_id: str) -> str:
        return hmac.new(self._mac_key, key_id.encode(), hashlib.sha256).hexdigest()

    async def _call(self, call: Any) -> Any:
        """Await one Redis call within the timeout (redis-py types its results loosely)."""
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise KeysUnavailable(f"the shared store (state.redis_url) did not answer: "
                                  f"{type(exc).__name__}") from None


def _importable(store: KeyStore) -> dict[str, bytes]:
    """Every epoch of a keys_dir that has a current one, checked to open under this master
    key (so a wrong one is refused before anything is written)."""
    if store.current_id() is None:
        return {}
    for key_id in store.ids():
        if not KEY_ID.match(key_id):
            raise CustodyError(f"{key_id} in {store.directory} is not a key id `veil keys` "
                               "made; nothing imported")
    return {key_id: store.sealed(key_id) for key_id in store.ids()}


@contextlib.asynccontextmanager
async def one_off_store(redis_url: str, master_key: bytes) -> AsyncIterator[RedisKeyStore]:
    """For `veil keys` and the preflight: a connection of their own, with a timeout fit for a
    command run once (an operator can wait seconds; a request cannot)."""
    redis = connect(redis_url, ONE_OFF_TIMEOUT_S)
    try:
        yield RedisKeyStore(redis, master_key, ONE_OFF_TIMEOUT_S)
    finally:
        await redis.aclose()
