"""Getting one backend's evidence: read the certificate it presents, then ask its evidence
endpoint, with a fresh nonce, over a connection pinned to that certificate. What comes back is
not looked at here (gateway/attestation/evidence.py verifies it); what is kept is what it must
be bound to, so a replayed document or one from another machine is refused there."""

from __future__ import annotations

import hashlib
import secrets
from urllib.parse import urlsplit

from gateway.attestation.binding import binding, spki_sha256
from gateway.attestation.evidence import MAX_EVIDENCE_BYTES, Fetched
from gateway.attestation.transport import Transport
from gateway.errors import EvidenceError
from gateway.settings import BackendSettings

NONCE_BYTES = 32


class EvidenceFetcher:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def fetch(self, backend: BackendSettings) -> Fetched:
        settings = backend.attestation
        if settings is None:
            raise EvidenceError(f"backend {backend.name} is not set up for attestation")
        origin = urlsplit(backend.url)
        certificate = await self._transport.certificate(
            origin.hostname or "", origin.port or 443, timeout_s=settings.timeout_s)
        try:
            key_hash = spki_sha256(certificate)
        except ValueError:
            raise EvidenceError("the backend's TLS certificate does not parse") from None
        nonce = secrets.token_bytes(NONCE_BYTES)
        pin = hashlib.sha256(certificate).digest()
        response = await self._transport.get(
            f"{origin.scheme}://{origin.netloc}{settings.evidence_path}",
            params={"nonce": nonce.hex()}, pin=pin, timeout_s=settings.timeout_s,
            max_bytes=MAX_EVIDENCE_BYTES)
        if response.status != 200:
            raise EvidenceError(f"evidence endpoint answered {response.status}")
        return Fetched(response.body, binding(nonce, key_hash), pin)
