"""Getting one backend's evidence: read the certificate it presents, then ask its evidence
endpoint, with a fresh nonce, over a connection pinned to that certificate. What comes back is
not looked at here (gateway/attestation/evidence.py verifies it); what is kept is what it must
be bound to, so a replayed document or one from another machine is refused there.

The two steps are apart because a replica may adopt evidence another replica received for the
same certificate (gateway/state/shared_attestation.py): it still reads the certificate itself,
and binds what it adopts to that certificate, never to one a record names.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.attestation.binding import binding, spki_sha256
from gateway.attestation.evidence import MAX_EVIDENCE_BYTES, Fetched
from gateway.attestation.transport import Transport
from gateway.errors import EvidenceError
from gateway.settings import BackendAttestation, BackendSettings

NONCE_BYTES = 32


@dataclass(frozen=True)
class Presented:
    """The TLS certificate a backend presented to this gateway, as this gateway read it."""

    sha256: bytes  # of the DER certificate: what requests are pinned to
    key_sha256: bytes  # of its public key (SPKI): what the evidence must bind

    def bind(self, received: Received) -> Fetched:
        """The evidence with the binding it must carry for this certificate and its nonce."""
        return Fetched(received.body, binding(received.nonce, self.key_sha256), self.sha256)


@dataclass(frozen=True)
class Received:
    """An evidence document as the backend sent it, the nonce it was asked with, and when it
    was asked: all a replica needs to verify it again for the same certificate."""

    body: bytes
    nonce: bytes
    at: float


class EvidenceFetcher:
    def __init__(self, transport: Transport, clock: Callable[[], float] = time.time) -> None:
        self._transport = transport
        self._clock = clock

    async def presented(self, backend: BackendSettings) -> Presented:
        origin = urlsplit(backend.url)
        certificate = await self._transport.certificate(
            origin.hostname or "", origin.port or 443, timeout_s=_settings(backend).timeout_s)
        try:
            key_hash = spki_sha256(certificate)
        except ValueError:
            raise EvidenceError("the backend's TLS certificate does not parse") from None
        return Presented(hashlib.sha256(certificate).digest(), key_hash)

    async def fetch(self, backend: BackendSettings, presented: Presented) -> Received:
        """Fresh evidence, asked over a connection pinned to the certificate presented."""
        settings = _settings(backend)
        origin = urlsplit(backend.url)
        nonce = secrets.token_bytes(NONCE_BYTES)
        asked_at = self._clock()
        response = await self._transport.get(
            f"{origin.scheme}://{origin.netloc}{settings.evidence_path}",
            params={"nonce": nonce.hex()}, pin=presented.sha256, timeout_s=settings.timeout_s,
            max_bytes=MAX_EVIDENCE_BYTES)
        if response.status != 200:
            raise EvidenceError(f"evidence endpoint answered {response.status}")
        return Received(response.body, nonce, asked_at)


def _settings(backend: BackendSettings) -> BackendAttestation:
    if backend.attestation is None:
        raise EvidenceError(f"backend {backend.name} is not set up for attestation")
    return backend.attestation
