"""One backend's evidence document, parsed and verified. No network and no schedule here: it is
given the document with the binding it must carry (this gateway's nonce and the backend's TLS
key), the roots, the clock, and a source for the endorsements the document does not carry, and
it answers the verified parts or raises EvidenceError.

Evidence protocol (documented in the README):
    GET <backend origin><evidence_path>?nonce=<64 hex digits>
    200 {"evidence": [{"format": "sev-snp", "report": <base64>, "vcek": <base64 DER>},
                      {"format": "tdx", "quote": <base64>, "collateral": {...}},
                      {"format": "nvidia-gpu", "evidence": <hex SPDM request+response>,
                       "certificates": <PEM chain>, "ocsp": [<base64 DER OCSP response>]},
                      {"format": "token", "token": <JWT>}]}

One "nvidia-gpu" part per GPU (at most MAX_GPUS), each verified on its own and all of them
reported: one GPU that fails refuses the whole document, named by its place among the GPU
parts and its device certificate's serial. The same GPU twice (the same attestation key) is
refused, so one good GPU cannot stand in for another.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from cryptography import x509

from gateway.attestation.nvidia import (
    VerifiedGpu,
    certificate_serial,
    gpu_label,
    key_sha256,
    load_chain,
    verify_gpu_evidence,
)
from gateway.attestation.revocation import (
    check_ocsp,
    check_snp_crl,
    ocsp_matches,
    ocsp_targets,
)
from gateway.attestation.snp import (
    SnpReport,
    VerifiedSnp,
    load_certificate,
    parse_report,
    verify_report,
)
from gateway.attestation.tdx import (
    Collateral,
    TdxQuote,
    VerifiedTdx,
    collateral_from_json,
    parse_quote,
    verify_quote,
)
from gateway.attestation.trust_roots import Roots
from gateway.errors import EvidenceError

MAX_EVIDENCE_BYTES = 1024 * 1024  # 16 GPUs (~25 KB each, OCSP stapled) and the CPU's part
MAX_GPUS = 16  # an HGX node has 8
CPU_HARDWARE = ("sev-snp", "tdx")  # at most one part of each


@dataclass(frozen=True)
class Fetched:
    """An evidence document as it came from the backend, and what it must be bound to."""

    body: bytes
    binding: bytes  # the 64 bytes report_data must equal (gateway/attestation/binding.py)
    certificate_sha256: bytes  # the certificate it was fetched over: requests are pinned to it


class CollateralSource(Protocol):
    """Endorsements a backend may leave out (gateway/attestation/collateral.py fetches them)."""

    async def vcek(self, report: SnpReport) -> bytes: ...

    async def tdx(self, quote: TdxQuote) -> Collateral: ...

    async def amd_crl(self, product: str, kind: str) -> bytes:
        """The ARK's CRL (DER) for a product line's "vcek" or "vlek" chain."""
        ...

    async def ocsp(self, cert: x509.Certificate, issuer: x509.Certificate,
                   responder: str) -> bytes:
        """The responder's OCSP response (DER) about `cert`."""
        ...


@dataclass(frozen=True)
class Evidence:
    """Verified parts of one backend's evidence, bound to its key and this gateway's nonce."""

    snp: VerifiedSnp | None
    tdx: VerifiedTdx | None
    gpus: tuple[VerifiedGpu, ...]  # one per nvidia-gpu part, in the document's order
    tokens: tuple[str, ...]  # checked per trust level: each level names its issuer and keys
    expected_nonce: str  # hex binding a token's nonce claim must carry
    certificate_sha256: bytes
    verified_at: float
    digest: str  # what the audit trail records
    revocation_until: float = float("inf")  # the earliest nextUpdate of the CRLs and OCSP

    def not_after(self) -> float:
        """The endorsement certificate's end (SNP), Intel's collateral's and PCK CRLs'
        nextUpdate (TDX), the ARK's CRL's and the OCSP responses' nextUpdate (SNP, GPU): the
        verdict lapses then, and is renewed with fresh data."""
        ends = [self.snp.not_after.timestamp(), self.revocation_until] if self.snp \
            else [self.revocation_until]
        ends += [self.tdx.next_update.timestamp()] if self.tdx else []
        return min(ends, default=float("inf"))


class EvidenceVerifier:
    def __init__(self, roots: Roots, collateral: CollateralSource,
                 clock: Callable[[], float] = time.time) -> None:
        self._roots = roots
        self._collateral = collateral
        self._clock = clock

    async def verify(self, fetched: Fetched) -> Evidence:
        """Every part must verify and be bound; one part that does not refuses the whole."""
        if len(fetched.body) > MAX_EVIDENCE_BYTES:
            raise EvidenceError(f"evidence larger than {MAX_EVIDENCE_BYTES // 1024} KiB")
        now = self._clock()
        at = datetime.fromtimestamp(now, UTC)
        snp: VerifiedSnp | None = None
        tdx: VerifiedTdx | None = None
        gpu_parts: list[Mapping[str, Any]] = []
        tokens: list[str] = []
        seen: set[str] = set()
        revocation: list[datetime] = []
        for part in parse_parts(fetched.body):
            kind = part.get("format")
            if kind == "token" and isinstance(part.get("token"), str):
                tokens.append(part["token"])
                continue
            if kind == "nvidia-gpu":
                gpu_parts.append(part)
                continue
            if not isinstance(kind, str) or kind not in CPU_HARDWARE:
                raise EvidenceError(f"unsupported evidence part {_show(kind)}")
            if kind in seen:
                raise EvidenceError(f"evidence has more than one {kind!r} part")
            seen.add(kind)
            if kind == "sev-snp":
                snp = await self._snp(part, fetched.binding, at, revocation)
            else:
                tdx = await self._tdx(part, fetched.binding, at)
        gpus = await self._gpus(gpu_parts, fetched.binding, at, revocation)
        values = {"snp": snp.values() if snp else None, "tdx": tdx.values() if tdx else None,
                  "gpus": [{"serial": g.serial, "measurements": {
                      str(i): v.hex() for i, v in g.evidence.measurements.items()}}
                      for g in gpus],
                  "tokens": len(tokens),
                  "certificate_sha256": fetched.certificate_sha256.hex()}
        digest = "sha256:" + hashlib.sha256(orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
                                            ).hexdigest()
        return Evidence(snp=snp, tdx=tdx, gpus=gpus, tokens=tuple(tokens),
                        expected_nonce=fetched.binding.hex(),
                        certificate_sha256=fetched.certificate_sha256, verified_at=now,
                        digest=digest, revocation_until=min(
                            (t.timestamp() for t in revocation), default=float("inf")))

    async def _snp(self, part: Mapping[str, Any], expected: bytes, at: datetime,
                   revocation: list[datetime]) -> VerifiedSnp:
        try:
            report = base64.b64decode(part["report"], validate=True)
            vcek = base64.b64decode(part["vcek"], validate=True) if part.get("vcek") else None
        except (KeyError, TypeError, binascii.Error):
            raise EvidenceError("sev-snp evidence needs a base64 'report' (and 'vcek', unless "
                                "the gateway fetches it from AMD KDS)") from None
        if vcek is None:
            vcek = await self._collateral.vcek(parse_report(report))
        verified = verify_report(report, vcek, at=at, roots=self._roots.amd)
        if verified.report.report_data != expected:
            raise EvidenceError("sev-snp: report_data is not bound to this nonce and TLS key "
                                "(a replayed report, or evidence from another machine)")
        revocation.append(await self._snp_not_revoked(verified, vcek, at))
        return verified

    async def _snp_not_revoked(self, verified: VerifiedSnp, vcek: bytes,
                               at: datetime) -> datetime:
        """The ARK's CRL lists neither the ASK/ASVK nor the VCEK/VLEK; until its nextUpdate."""
        crl = await self._collateral.amd_crl(verified.product, verified.key_kind)
        return check_snp_crl(crl, verified, load_certificate(vcek),
                             self._roots.amd[verified.product], at)

    async def _tdx(self, part: Mapping[str, Any], expected: bytes, at: datetime) -> VerifiedTdx:
        try:
            raw = base64.b64decode(part["quote"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise EvidenceError("tdx evidence needs a base64 'quote'") from None
        sent = part.get("collateral")
        quote = parse_quote(raw)
        collateral = collateral_from_json(sent) if isinstance(sent, dict) \
            else await self._collateral.tdx(quote)
        if collateral.pck_crl is None:  # sent without it: from the folder or Intel PCS
            collateral = replace(collateral, pck_crl=(await self._collateral.tdx(quote)).pck_crl)
        if collateral.pck_crl is None:
            raise EvidenceError("tdx: no PCK CRL (send pck_crl with the collateral, or put "
                                "pck_crl_<platform|processor>.crl in intel_collateral_dir): a "
                                "PCK certificate is never taken unchecked for revocation")
        verified = verify_quote(raw, collateral, at=at, root=self._roots.intel)
        if verified.quote.report.report_data != expected:
            raise EvidenceError("tdx: report_data is not bound to this nonce and TLS key "
                                "(a replayed quote, or evidence from another machine)")
        return verified

    async def _gpus(self, parts: list[Mapping[str, Any]], expected: bytes, at: datetime,
                    revocation: list[datetime]) -> tuple[VerifiedGpu, ...]:
        """Chains and signatures checked in threads, all GPUs at once (eight of them on the
        event loop would hold every request meanwhile); then OCSP, GPU by GPU, so answers
        about the CAs they share are fetched once and read from the cache after."""
        if len(parts) > MAX_GPUS:
            raise EvidenceError(f"evidence has {len(parts)} nvidia-gpu parts, more than "
                                f"{MAX_GPUS}")
        signed = await asyncio.gather(*(
            asyncio.to_thread(verify_gpu_part, index, part, expected[:32], at, self._roots.nvidia)
            for index, part in enumerate(parts)), return_exceptions=True)
        problems: list[str] = []
        checked = []
        for outcome in signed:
            if isinstance(outcome, EvidenceError):
                problems.append(str(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                checked.append(outcome)
        gpus = [gpu for gpu, _, _ in checked]
        problems += duplicate_gpus(gpus)
        for gpu, chain, stapled in checked:
            try:
                revocation += await self._gpu_not_revoked(chain, stapled, at)
            except EvidenceError as exc:
                problems.append(about_gpu(gpu.index, gpu.serial, exc))
        if problems:
            raise EvidenceError("; ".join(problems))
        return tuple(gpus)

    async def _gpu_not_revoked(self, chain: list[x509.Certificate],
                               stapled: list[bytes], at: datetime) -> list[datetime]:
        """OCSP says good for every certificate of the chain an NVIDIA CA issued (stapled by
        the backend, else asked of the responder); until the answers' nextUpdate. Each
        answer's signature is checked in a thread, like the chains: 8 GPUs' answers, a few ms
        each, would otherwise hold the loop for tens of ms."""
        ends = []
        for cert, issuer, responder in ocsp_targets(chain, self._roots.nvidia):
            response = next((r for r in stapled if ocsp_matches(r, cert, at)), None) \
                or await self._collateral.ocsp(cert, issuer, responder)
            ends.append(await asyncio.to_thread(check_ocsp, response, cert, issuer, at))
        return ends


def verify_gpu_part(index: int, part: Mapping[str, Any], nonce: bytes | None, at: datetime,
                    root: x509.Certificate) -> tuple[VerifiedGpu, list[x509.Certificate],
                                                     list[bytes]]:
    """One GPU part's chain to NVIDIA's root, its signature and its nonce (the agent asks every
    GPU with the first 32 bytes of the binding; None: any, as offline); errors name the GPU."""
    serial = None
    try:
        raw, chain_pem, stapled = gpu_part_fields(part)
        chain = load_chain(chain_pem)
        serial = certificate_serial(chain[0]) if chain else None
        evidence = verify_gpu_evidence(raw, chain_pem, expected_nonce=nonce, at=at, root=root)
    except EvidenceError as exc:
        raise EvidenceError(about_gpu(index, serial, exc)) from None
    assert serial is not None  # noqa: S101 (verify_gpu_evidence refuses an empty chain)
    return VerifiedGpu(index, serial, key_sha256(chain[0]), evidence), chain, stapled


def gpu_part_fields(part: Mapping[str, Any]) -> tuple[bytes, bytes, list[bytes]]:
    """(SPDM transcript, PEM chain, stapled OCSP responses) of an nvidia-gpu part."""
    try:
        return (bytes.fromhex(str(part["evidence"])), str(part["certificates"]).encode(),
                [base64.b64decode(r, validate=True) for r in part.get("ocsp") or []])
    except (KeyError, ValueError, TypeError):
        raise EvidenceError("nvidia-gpu: the part needs hex 'evidence', PEM 'certificates' "
                            "and, if any, base64 'ocsp' responses") from None


def about_gpu(index: int, serial: str | None, exc: EvidenceError) -> str:
    """A GPU's problem, naming the GPU: "nvidia-gpu: GPU 3 (certificate serial 5a..): ..."."""
    reason = str(exc).removeprefix("nvidia-gpu: ")
    return f"nvidia-gpu: {gpu_label(index, serial)}: {reason}"


def duplicate_gpus(gpus: Sequence[VerifiedGpu]) -> list[str]:
    """The same GPU twice: its one attestation key signs both, whatever certificate each
    part carries (a chain that is not the key's would not have verified)."""
    first: dict[bytes, VerifiedGpu] = {}
    problems = []
    for gpu in gpus:
        key = gpu.key_sha256
        if key in first:
            problems.append(f"nvidia-gpu: {gpu.label()} is the same GPU as "
                            f"{first[key].label()} (the same attestation key)")
        else:
            first[key] = gpu
    return problems


def parse_parts(body: bytes) -> list[Mapping[str, Any]]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EvidenceError("evidence is not JSON") from None
    parts = document.get("evidence") if isinstance(document, dict) else None
    if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
        raise EvidenceError("evidence must be {\"evidence\": [parts...]}")
    return parts


def _show(value: object) -> str:
    """A part's format as messages show it: the backend chose it, so it is cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
