"""The connection to the shared store: one client per worker, every call bounded by
`state.timeout_s`, so a slow or dead Redis costs a request a known, small delay and then the
behaviour its concern's config chose, never a hang. The client connects on first use and
reconnects by itself once the server is back."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.asyncio import Redis


def connect(url: str, timeout_s: float) -> Redis:
    return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                          health_check_interval=0, retry_on_timeout=False,
                          decode_responses=True)


def derived_keys(secret: bytes, use: bytes) -> tuple[bytes, bytes]:
    """(AES-256-GCM key, HMAC key for record names) from the replicas' shared secret, one pair
    per `use`, so a record of one kind never opens as another."""
    material = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=use).derive(secret)
    return material[:32], material[32:]
