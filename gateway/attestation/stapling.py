"""OCSP responses the agent staples to its GPU evidence parts (`veil attest agent
--staple-ocsp CACHE_DIR`): for every certificate of the GPU's chain that an NVIDIA CA issued,
the responder's answer, asked the way the gateway asks it (attestation.ocsp_responders'
defaults: NVIDIA's by POST with a nonce) and kept on disk until its nextUpdate, so one fetch
serves every evidence request until then.

The agent does not judge them: the gateway checks each stapled response as it checks one it
fetched, and asks the responder itself when the stapled one is not current. So a failure here
staples nothing (logged) rather than refusing the request.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509

from gateway.attestation.collateral import CollateralStore
from gateway.attestation.nvidia import load_chain, nvidia_root
from gateway.attestation.revocation import ocsp_targets
from gateway.attestation.transport import NetworkTransport
from gateway.errors import EvidenceError, FetchError
from gateway.observability.logging import get_logger
from gateway.settings import AttestationSettings

log = get_logger("veil.attest.agent")


class OcspSource(Protocol):
    async def ocsp(self, cert: x509.Certificate, issuer: x509.Certificate,
                   responder: str) -> bytes: ...


class OcspStapler:
    def __init__(self, source: OcspSource, root: x509.Certificate,
                 closing: Callable[[], Awaitable[None]] | None = None) -> None:
        self._source = source
        self._root = root
        self._closing = closing

    async def close(self) -> None:
        if self._closing is not None:
            await self._closing()

    async def staple(self, part: dict[str, Any]) -> dict[str, Any]:
        """The GPU part with "ocsp": one response per certificate NVIDIA's CAs issued, or the
        part as it was when any of them cannot be had."""
        try:
            targets = ocsp_targets(load_chain(str(part["certificates"]).encode()), self._root)
            responses = [await self._source.ocsp(cert, issuer, responder)
                         for cert, issuer, responder in targets]
        except (EvidenceError, FetchError, KeyError) as exc:
            log.warning("ocsp_staple_failed", reason=str(exc) if not isinstance(exc, KeyError)
                        else "no certificates in the GPU part")
            return part
        return {**part, "ocsp": [base64.b64encode(r).decode() for r in responses]}



def network_stapler(cache_dir: Path) -> OcspStapler:
    """A stapler asking NVIDIA's responder over the network (`close` ends its session),
    answers kept in `cache_dir`; for chains to NVIDIA's pinned root."""
    transport = NetworkTransport()
    settings = AttestationSettings(amd_kds_url=None, intel_pcs_url=None,
                                   cache_dir=str(cache_dir))
    return OcspStapler(CollateralStore(settings, transport), nvidia_root(),
                       closing=transport.close)
