"""`veil attest agent`: the small service beside the model server, inside the confidential VM,
that answers the gateway's evidence requests.

    GET /.well-known/veil-attestation?nonce=<64 hex digits>

For each request it computes the binding of the nonce to the TLS certificate the model server
presents (the same file the TLS front end serves), asks the platform for a report over exactly
those 64 bytes through the Linux configfs-tsm interface (`/sys/kernel/config/tsm/report`, the
same for SEV-SNP and TDX), and answers with the evidence parts (gateway/attestation/evidence.py
documents the format). Route that path of the model server's TLS origin to this agent: the
evidence must come over the connection whose key it binds.

Where NVIDIA's `nvattest` is installed (gateway/attestation/nvattest.py), each GPU's SPDM
measurements are asked with the first 32 bytes of the same binding and added as "nvidia-gpu"
parts; without it the agent serves CPU evidence only and says so when it starts. A GPU tool
that is there but fails refuses the request (503): evidence is never silently partial. With
`--staple-ocsp` each GPU part carries the OCSP responses about its chain (stapling.py).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.attestation.binding import binding, spki_sha256
from gateway.attestation.nvattest import GpuSource, find_nvattest
from gateway.attestation.stapling import OcspStapler, network_stapler
from gateway.attestation.tdx import collateral_from_dir, collateral_json, parse_quote
from gateway.errors import EvidenceError
from gateway.observability.logging import get_logger

log = get_logger("veil.attest.agent")
EVIDENCE_PATH = "/.well-known/veil-attestation"
TSM_ROOT = Path("/sys/kernel/config/tsm/report")


@dataclass(frozen=True)
class TsmReport:
    provider: str  # "sev_guest" or "tdx_guest"
    outblob: bytes  # the SNP report or the TDX quote
    auxblob: bytes  # SNP: the host's certificate table (may hold the VCEK); else empty


class ReportSource(Protocol):
    def report(self, report_data: bytes) -> TsmReport: ...


class ConfigfsTsm:
    """The kernel's report interface: make an entry, write inblob, read outblob, remove it.
    One entry per request, so concurrent requests never read each other's reports."""

    def __init__(self, root: Path = TSM_ROOT) -> None:
        self._root = root

    def report(self, report_data: bytes) -> TsmReport:
        entry = self._root / f"veil-{secrets.token_hex(8)}"
        entry.mkdir()
        try:
            (entry / "inblob").write_bytes(report_data)
            provider = (entry / "provider").read_text().strip()
            outblob = (entry / "outblob").read_bytes()
            aux = entry / "auxblob"
            auxblob = aux.read_bytes() if aux.exists() else b""
        finally:
            entry.rmdir()
        return TsmReport(provider, outblob, auxblob)


@dataclass(frozen=True)
class AgentSettings:
    certificate: Path  # the TLS certificate the model server presents (PEM)
    vcek: Path | None = None  # SNP: the VCEK, when the host does not put it in auxblob
    collateral_dir: Path | None = None  # TDX: Intel PCS collateral to send with the quote


class Reporter:
    """The platform's report over given report_data, as the CPU part of an evidence document;
    one report at a time (the platform handles one). The agent and the gateway's own evidence
    (self_evidence.py) both ask through it."""

    def __init__(self, source: ReportSource, settings: AgentSettings) -> None:
        self._source = source
        self._settings = settings
        self._lock = asyncio.Lock()

    async def cpu_part(self, report_data: bytes) -> tuple[str, dict[str, Any]]:
        """(the TSM provider, the part)."""
        async with self._lock:
            report = await asyncio.to_thread(self._source.report, report_data)
        return report.provider, _cpu_part(report, self._settings)


def certificate_key_sha256(certificate: Path) -> bytes:
    """SHA-256 of the SPKI of a PEM certificate: what evidence binds."""
    try:
        cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    except ValueError:
        raise EvidenceError(f"{certificate}: not a PEM certificate") from None
    return spki_sha256(cert.public_bytes(serialization.Encoding.DER))


def requested_nonce(request: web.Request) -> bytes | None:
    """The 32-byte nonce of an evidence request, or None when it is not 64 hex digits."""
    try:
        nonce = bytes.fromhex(request.query.get("nonce", ""))
    except ValueError:
        return None
    return nonce if len(nonce) == 32 else None


BAD_NONCE = {"error": "nonce must be 64 hex digits"}


def build_agent_app(settings: AgentSettings, source: ReportSource,
                    gpu: GpuSource | None = None,
                    stapler: OcspStapler | None = None) -> web.Application:
    key_hash = certificate_key_sha256(settings.certificate)
    reporter = Reporter(source, settings)
    gpu_lock = asyncio.Lock()  # the GPUs one SPDM exchange at a time

    async def evidence(request: web.Request) -> web.Response:
        nonce = requested_nonce(request)
        if nonce is None:
            return web.json_response(BAD_NONCE, status=400)
        bound = binding(nonce, key_hash)
        provider, part = await reporter.cpu_part(bound)
        parts = [part]
        if gpu is not None:
            try:
                async with gpu_lock:
                    gpus = await asyncio.to_thread(gpu.parts, bound[:32])
            except EvidenceError as exc:
                log.warning("gpu_evidence_failed", reason=str(exc))
                return web.json_response({"error": f"GPU evidence: {exc}"}, status=503)
            parts += [await stapler.staple(p) for p in gpus] if stapler else gpus
        log.info("evidence_served", provider=provider, gpus=len(parts) - 1)
        return web.json_response({"evidence": parts})

    app = web.Application()
    app.router.add_get(EVIDENCE_PATH, evidence)
    if stapler is not None:
        async def close(_: web.Application) -> None:
            await stapler.close()

        app.on_cleanup.append(close)
    return app


def _cpu_part(report: TsmReport, settings: AgentSettings) -> dict[str, Any]:
    if report.provider == "tdx_guest":
        part: dict[str, Any] = {"format": "tdx",
                                "quote": base64.b64encode(report.outblob).decode()}
        if settings.collateral_dir:
            found = collateral_from_dir(settings.collateral_dir, parse_quote(report.outblob))
            part["collateral"] = collateral_json(found)
        return part
    if report.provider == "sev_guest":
        vcek = vcek_from_auxblob(report.auxblob) or (
            settings.vcek.read_bytes() if settings.vcek else None)
        if vcek is None:
            raise web.HTTPServiceUnavailable(reason="no VCEK: pass --vcek or have the host "
                                                    "provide its certificate table")
        return {"format": "sev-snp", "report": base64.b64encode(report.outblob).decode(),
                "vcek": base64.b64encode(vcek).decode()}
    raise web.HTTPServiceUnavailable(reason=f"unsupported TSM provider {report.provider}")


# GHCB spec, "SNP Extended Guest Request": the VCEK's entry in the certificate table.
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes_le


def vcek_from_auxblob(auxblob: bytes) -> bytes | None:
    """The VCEK from the SNP certificate table the host supplies (GUID, offset u32, length
    u32 entries, ended by an all-zero entry; GUIDs in the little-endian layout)."""
    offset = 0
    while offset + 24 <= len(auxblob):
        guid = auxblob[offset:offset + 16]
        if not any(guid):
            return None
        start = int.from_bytes(auxblob[offset + 16:offset + 20], "little")
        length = int.from_bytes(auxblob[offset + 20:offset + 24], "little")
        if guid == VCEK_GUID and start + length <= len(auxblob):
            return auxblob[start:start + length]
        offset += 24
    return None


def gpu_source(enabled: bool = True, search_path: str | None = None) -> GpuSource | None:
    """NVIDIA's tool when it is installed (and not turned off); the log says which it is."""
    if not enabled:
        log.info("gpu_evidence_off", reason="--no-gpu: serving CPU evidence only")
        return None
    found = find_nvattest(search_path)
    if found is None:
        log.info("gpu_evidence_unavailable",
                 reason="nvattest not found on PATH: serving CPU evidence only")
        return None
    log.info("gpu_evidence_on", tool=found.path)
    return found


def run_agent(host: str, port: int, settings: AgentSettings, tls_key: Path | None,
              tsm_root: Path = TSM_ROOT, *, gpu: GpuSource | None = None,
              staple_ocsp: Path | None = None) -> None:
    """`staple_ocsp`: the folder OCSP responses for the GPU chains are kept in (None: staple
    none, the gateway asks NVIDIA's responder)."""
    import ssl  # noqa: PLC0415

    context = None
    if tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.certificate, tls_key)
    if not tsm_root.is_dir():
        raise SystemExit(f"veil attest agent: {tsm_root} not found (needs Linux 6.7+ with "
                         "configfs-tsm, inside an SEV-SNP or TDX guest)")
    stapler = network_stapler(staple_ocsp) if staple_ocsp and gpu else None
    web.run_app(build_agent_app(settings, ConfigfsTsm(tsm_root), gpu, stapler), host=host,
                port=port, ssl_context=context, access_log=None, print=None)
