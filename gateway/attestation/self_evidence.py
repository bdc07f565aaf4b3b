"""The gateway's own evidence, for its clients: when it runs in a confidential VM, it answers

    GET /.well-known/veil-attestation?nonce=<64 hex digits>

like `veil attest agent` does for a backend (the same parts, evidence.py), with report_data
bound to the client's nonce, the key of the TLS certificate the gateway serves AND the digest of
the policies in force when the request came (binding.py, `gateway_binding`), and those policies
stated in the clear so the client can compare them with what it expects:

    200 {"evidence": [<the sev-snp or tdx part>],
         "binding": "veil-gateway-attestation-v1",
         "policy_set_digest": "sha256:<hex>",
         "policies": [{"name": "...", "digest": "sha256:<hex>"}, ...]}

A reload changes the digest, so evidence always describes the rules a request would meet now.
`SelfEvidence.document` needs no request: what a key service (attested key release) would ask
the gateway for is the same document.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.attestation.agent import (
    BAD_NONCE,
    AgentSettings,
    ConfigfsTsm,
    Reporter,
    ReportSource,
    certificate_key_sha256,
    requested_nonce,
)
from gateway.attestation.binding import GATEWAY_BINDING, gateway_binding, policy_set_digest
from gateway.errors import EvidenceError
from gateway.observability.logging import get_logger
from gateway.settings import Settings

log = get_logger("veil.attest.self")
InForce = Callable[[], Sequence[tuple[str, str]]]  # the policies now: (name, digest), in order


class SelfEvidence:
    def __init__(self, reporter: Reporter, key_sha256: bytes, policies: InForce) -> None:
        self._reporter = reporter
        self._key_sha256 = key_sha256
        self._policies = policies

    async def document(self, nonce: bytes) -> dict[str, Any]:
        policies = list(self._policies())  # read once: the digest bound is the one stated
        digest = policy_set_digest(policies)
        _, part = await self._reporter.cpu_part(
            gateway_binding(nonce, self._key_sha256, digest))
        return {"evidence": [part], "binding": GATEWAY_BINDING, "policy_set_digest": digest,
                "policies": [{"name": name, "digest": d} for name, d in policies]}

    async def handle(self, request: web.Request) -> web.Response:
        nonce = requested_nonce(request)
        if nonce is None:
            return web.json_response(BAD_NONCE, status=400)
        try:
            document = await self.document(nonce)
        except OSError as exc:  # configfs-tsm refused the report
            log.error("self_evidence_failed",  # noqa: TRY400 (no traceback in the log)
                      reason=exc.strerror or type(exc).__name__)
            return web.json_response({"error": "the platform made no report"}, status=503)
        log.info("self_evidence_served", policy_set_digest=document["policy_set_digest"])
        return web.json_response(document)


def self_evidence(settings: Settings, policies: InForce,
                  platform: ReportSource | None = None) -> SelfEvidence | None:
    """From `self_attestation` (None when it is off). `platform`: what makes reports (None:
    configfs-tsm at `tsm_root`, which must exist: a gateway told to prove itself that cannot
    does not start)."""
    wanted = settings.self_attestation
    if not wanted.enabled:
        return None
    certificate = settings.listen.tls_cert_file
    if certificate is None:  # the settings refuse this; checked again for code that builds
        raise EvidenceError("self_attestation needs listen.tls_cert_file")
    return SelfEvidence(own_reporter(settings, platform),
                        certificate_key_sha256(Path(certificate)), policies)


def own_reporter(settings: Settings, platform: ReportSource | None = None) -> Reporter:
    """The gateway's own reports (for its clients, and for a key service: attested key
    release), from the platform `self_attestation` describes; `platform` None: configfs-tsm
    at `tsm_root`, which must exist."""
    wanted = settings.self_attestation
    certificate = settings.listen.tls_cert_file
    if certificate is None:  # the settings refuse this; checked again for code that builds
        raise EvidenceError("the gateway's own evidence needs listen.tls_cert_file")
    if platform is None:
        platform = ConfigfsTsm(tsm_root(settings))
    return Reporter(platform, AgentSettings(Path(certificate), _path(wanted.vcek_file),
                                            _path(wanted.intel_collateral_dir)))


def tsm_root(settings: Settings) -> Path:
    root = Path(settings.self_attestation.tsm_root)
    if not root.is_dir():
        raise EvidenceError(f"self_attestation: {root} not found (needs Linux 6.7+ with "
                            "configfs-tsm, inside an SEV-SNP or TDX guest)")
    return root


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
