"""The gateway's side of attested key release (the protocol: gateway/keys/release.py): before
anything uses a key, ask `veil keys serve` for a nonce, make this machine's own evidence over
the binding of that nonce, the gateway's TLS key and a fresh X25519 key, send it, and open the
keys the service returns. They are held in memory only (GatewayKeys hands them out).

Any failure is a `KeyReleaseRefused` that stops the start: the service refused (its reason
quoted), could not be reached over TLS to `ca_file`, answered something else, or the platform
made no report.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.attestation.agent import ReportSource, certificate_key_sha256
from gateway.attestation.self_evidence import own_reporter
from gateway.errors import EvidenceError, KeyReleaseRefused
from gateway.keys.release import (
    CHALLENGE_PATH,
    NONCE_BYTES,
    RELEASE_PATH,
    open_keys,
    raw_public,
    release_binding,
)
from gateway.observability.logging import get_logger
from gateway.settings import KeyReleaseSettings, Settings

log = get_logger("veil.keys.release")
MAX_REPLY_BYTES = 64 * 1024


def release_keys(settings: Settings, platform: ReportSource | None = None) -> dict[str, bytes]:
    """The keys `key_release` names, from the key service (`platform`: what makes this
    machine's reports; None: configfs-tsm). Runs its own event loop: called before the
    gateway's starts."""
    wanted = settings.key_release
    if wanted is None:
        return {}
    try:
        keys = asyncio.run(_released(settings, wanted, platform))
    except KeyReleaseRefused as exc:
        log.error("key_release_failed",  # noqa: TRY400 (the reason says it; no traceback)
                  service=wanted.url, reason=str(exc))
        raise
    log.info("keys_released", service=wanted.url, keys=sorted(keys))
    return keys


async def _released(settings: Settings, wanted: KeyReleaseSettings,
                    platform: ReportSource | None) -> dict[str, bytes]:
    certificate = Path(settings.listen.tls_cert_file or "")
    try:
        reporter = own_reporter(settings, platform)
        key_sha256 = certificate_key_sha256(certificate)
    except EvidenceError as exc:
        raise KeyReleaseRefused(f"key release: {exc}") from None
    origin = wanted.url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=wanted.timeout_s)
    # the key service's certificate and name, verified to ca_file (else the system's roots)
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=wanted.ca_file))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        challenge = await _post(session, origin + CHALLENGE_PATH, {})
        nonce = _nonce(challenge)
        ephemeral = X25519PrivateKey.generate()
        public = raw_public(ephemeral)
        try:
            _, part = await reporter.cpu_part(release_binding(nonce, key_sha256, public))
        except (OSError, web.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else exc.reason
            raise KeyReleaseRefused(f"key release: the platform made no report ({reason})"
                                    ) from None
        reply = await _post(session, origin + RELEASE_PATH, {
            "nonce": nonce.hex(), "keys": sorted(wanted.keys),
            "certificate": base64.b64encode(_der(certificate)).decode(),
            "ephemeral_key": base64.b64encode(public).decode(), "evidence": [part]})
    try:
        return open_keys(ephemeral, nonce, wanted.keys, reply,
                         base64.b64decode(wanted.service_key))
    except EvidenceError as exc:
        raise KeyReleaseRefused(f"key release: {exc}") from None


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    """The service's JSON answer to a 200; KeyReleaseRefused quoting its reason otherwise."""
    try:
        async with session.post(url, json=body) as response:
            raw = await response.content.read(MAX_REPLY_BYTES + 1)
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise KeyReleaseRefused(f"key release: the key service at {url} cannot be reached "
                                f"({type(exc).__name__}: {exc})") from None
    try:
        answer = None if len(raw) > MAX_REPLY_BYTES else orjson.loads(raw)
    except orjson.JSONDecodeError:
        answer = None
    if status != 200:
        reason = answer.get("error") if isinstance(answer, dict) else None
        raise KeyReleaseRefused(f"key release: the key service refused ({status}): "
                                f"{reason if isinstance(reason, str) else 'no reason given'}")
    if answer is None:
        raise KeyReleaseRefused(f"key release: {url} answered something other than JSON")
    return answer


def _nonce(challenge: Any) -> bytes:
    try:
        nonce = bytes.fromhex(challenge.get("nonce", "")) if isinstance(challenge, dict) \
            else b""
    except (TypeError, ValueError):
        nonce = b""
    if len(nonce) != NONCE_BYTES:
        raise KeyReleaseRefused("key release: the key service's challenge carries no nonce")
    return nonce


def _der(certificate: Path) -> bytes:
    return x509.load_pem_x509_certificate(certificate.read_bytes()).public_bytes(Encoding.DER)
