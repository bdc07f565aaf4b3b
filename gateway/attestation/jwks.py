"""Key sets of attestation services, fetched from the URLs the policies name and kept for an
hour. This is the only place token keys come from: a token's own `jku`/`x5u`/`jwk` headers are
never followed (gateway/attestation/tokens.py), or its issuer could vouch for itself.

A key set that cannot be re-fetched is used until its hour is up and then not at all: a level
that needs a token is then unmet (fail closed) rather than met with keys the service may have
rotated out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from gateway.attestation.transport import Transport
from gateway.errors import FetchError
from gateway.observability.logging import get_logger

log = get_logger("veil.attestation")
JWKS_TTL_S = 3600.0
MAX_JWKS_BYTES = 256 * 1024
TIMEOUT_S = 10.0


class JwksCache:
    def __init__(self, transport: Transport, clock: Callable[[], float] = time.time,
                 ttl_s: float = JWKS_TTL_S) -> None:
        self._transport = transport
        self._clock = clock
        self._ttl_s = ttl_s
        self._sets: dict[str, tuple[float, Mapping[str, Any]]] = {}  # url -> (fetched at, set)

    def keys(self, url: str) -> Mapping[str, Any] | None:
        """The key set fetched from `url` within the last hour, else None."""
        cached = self._sets.get(url)
        if cached is None or self._clock() - cached[0] >= self._ttl_s:
            return None
        return cached[1]

    async def refresh(self, urls: Iterable[str]) -> None:
        """Fetch those not fetched within the hour. A failure is logged and leaves the cache
        as it was: the levels that need that set stay unmet once its hour is up."""
        for url in set(urls):
            if self.keys(url) is not None:
                continue
            try:
                found = await self._fetch(url)
            except FetchError as exc:
                log.error("jwks_fetch_failed", url=url, reason=str(exc))  # noqa: TRY400
                continue
            self._sets[url] = (self._clock(), found)

    async def _fetch(self, url: str) -> Mapping[str, Any]:
        response = await self._transport.get(url, timeout_s=TIMEOUT_S,
                                             max_bytes=MAX_JWKS_BYTES)
        if response.status != 200:
            raise FetchError(f"key set answered {response.status}")
        try:
            found = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise FetchError("key set is not JSON") from None
        if not isinstance(found, dict):
            raise FetchError("key set is not a JSON object")
        return found
