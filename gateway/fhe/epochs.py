"""Which key epoch the gateway encrypts under, now: read from this replica's keys_dir, or from
the shared store that every replica reads (`fhe.keys_in`).

keys_dir: `current` is re-read on every request (one small file), so `veil keys rotate` on this
host takes effect at once.

Redis: the pointer is checked at most once a second, by the request that finds the check due
(the others go on under the epoch held; no Redis round trip per request). A newer epoch is
loaded and used from then on; requests already under the older one finish with it (each holds
its epoch). An older pointer (a replay) or one no gateway wrote is ignored and logged. Redis
failing or slow: the epoch held stays in use (a rotation is not a revocation), with a warning
and `veil_state_failures_total{concern="fhe_keys"}`; at start, no epoch obtainable refuses to
start, as a missing key store does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from redis.asyncio import Redis

from gateway.errors import CustodyError, KeysUnavailable
from gateway.fhe.keys import FheKeys, KeyStore
from gateway.fhe.shared_keys import RedisKeyStore
from gateway.keys.material import Sealer
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.settings import Settings

log = get_logger("veil.fhe")
CHECK_EVERY_S = 1.0


class Epochs(Protocol):
    async def start(self) -> None:
        """Load the current epoch, or raise `CustodyError`."""

    async def current(self) -> FheKeys:
        """The epoch to encrypt the next query under."""


class LocalEpochs:
    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._keys: FheKeys | None = None

    async def start(self) -> None:
        await self.current()

    async def current(self) -> FheKeys:
        key_id = self._store.current_id()
        if self._keys is None or self._keys.key_id != key_id:
            self._keys = self._store.load(key_id)
        return self._keys


class SharedEpochs:
    def __init__(self, store: RedisKeyStore, metrics: Metrics,
                 check_every_s: float = CHECK_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._metrics = metrics
        self._every = check_every_s
        self._clock = clock
        self._next_check = 0.0
        self._keys: FheKeys | None = None
        self._refused = ""  # the last refused pointer, logged once rather than every second

    async def start(self) -> None:
        key_id = await self._store.newest_id()
        if key_id is None:
            raise CustodyError("no FHE key in Redis: run `veil keys init`")
        self._keys = await self._store.load(key_id)
        self._next_check = self._clock() + self._every
        log.info("fhe_epoch_loaded", key_id=key_id)

    async def current(self) -> FheKeys:
        if self._keys is None:
            raise CustodyError("the FHE key epochs were not loaded (start first)")
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._every  # claimed: concurrent requests do not repeat it
            await self._check(self._keys)
        return self._keys

    async def _check(self, held: FheKeys) -> None:
        try:
            pointer = await self._store.pointer()
            if pointer.refused:
                self._refuse(pointer.raw)
            elif pointer.key_id is not None and pointer.key_id < held.key_id:
                self._refuse(pointer.raw, older=pointer.key_id, held=held.key_id)
            elif pointer.key_id is not None and pointer.key_id != held.key_id:
                self._keys = await self._store.load(pointer.key_id)
                log.info("fhe_epoch_loaded", key_id=pointer.key_id, previous=held.key_id)
        except KeysUnavailable as exc:
            self._metrics.state_failures.labels("fhe_keys").inc()
            log.warning("fhe_keys_unavailable", error=str(exc), key_id=held.key_id)
        except CustodyError as exc:  # the pointer's epoch is missing or does not open
            log.warning("fhe_epoch_refused", error=str(exc), key_id=held.key_id)

    def _refuse(self, raw: str, **epochs: str) -> None:
        """A pointer no gateway wrote, or an older genuine one (a replay): never followed.
        Its content is not logged (whoever planted it chose it); the key ids are ours."""
        if raw != self._refused:
            self._refused = raw
            log.warning("fhe_pointer_ignored",
                        reason="older epoch" if epochs else "not written by a gateway", **epochs)


def key_epochs(settings: Settings, redis: Redis | None, metrics: Metrics,
               master: bytes | Sealer) -> Epochs:
    """The epochs `fhe.keys_in` names, sealed under `master` (gateway/keys/sources.py)."""
    fhe = settings.fhe
    if fhe.keys_in == "dir":
        return LocalEpochs(KeyStore(Path(fhe.keys_dir), master))
    if redis is None:
        raise CustodyError("fhe.keys_in: redis needs state.redis_url")
    if not isinstance(master, bytes):
        raise CustodyError("fhe.keys_in: redis needs a master key in memory, not in the HSM")
    return SharedEpochs(RedisKeyStore(redis, master, settings.state.timeout_s), metrics)
