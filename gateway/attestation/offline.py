"""`veil attest verify`: verify evidence from files, offline, and say why it is or is not
trusted. The format is detected from the content; the exit code is 0 only when the evidence
verifies (and, with --policy and --level, meets that trust level). Loading the policy is the
CLI's business: this module is handed the level, so attestation depends on no policy code.

An evidence document as a backend serves it ({"evidence": [...]}, e.g. saved from `veil attest
agent`) is read for its nvidia-gpu parts, one per GPU, each with its chain and stapled OCSP
answers: every GPU is verified and shown (gpu_<n>_...), and the level must be met by all."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.attestation.evidence import (
    MAX_EVIDENCE_BYTES,
    MAX_GPUS,
    about_gpu,
    duplicate_gpus,
    gpu_part_fields,
    parse_parts,
    verify_gpu_part,
)
from gateway.attestation.levels import (
    TrustLevel,
    gpu_count_problems,
    gpu_problems,
    gpus_problems,
    level_snp_problems,
    level_tdx_problems,
    snp_registers,
    tdx_registers,
)
from gateway.attestation.nvidia import (
    GpuEvidence,
    VerifiedGpu,
    verify_gpu_evidence,
)
from gateway.attestation.offline_revocation import (
    gpu_revocation,
    snp_revocation,
    tdx_collateral,
    tdx_revocation,
)
from gateway.attestation.rim_store import offline_rim_problems
from gateway.attestation.rims import gpu_versions
from gateway.attestation.snp import REPORT_SIZE, verify_report
from gateway.attestation.tdx import collateral_from_dir, parse_quote, verify_quote
from gateway.attestation.trust_roots import Roots
from gateway.errors import EvidenceError


@dataclass(frozen=True)
class Wanted:
    """The trust level asked for, by name, and what the policy defines under it (None: the
    policy has no level of that name)."""

    name: str
    level: TrustLevel | None


@dataclass
class Outcome:
    ok: bool
    values: dict[str, object] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = "VERIFIED" if self.ok else "REFUSED"
        out = [head] + [f"  {key}: {value}" for key, value in self.values.items()]
        return out + [f"  reason: {reason}" for reason in self.reasons]


def verify_evidence_file(path: Path, *, vcek: Path | None, collateral: Path | None,
                         chain: Path | None, at: datetime | None, wanted: Wanted | None = None,
                         roots: Roots | None = None, crls: Sequence[Path] = (),
                         ocsp: Sequence[Path] = ()) -> Outcome:
    """`crls`, `ocsp`: revocation data saved from AMD KDS / Intel PCS / NVIDIA's responder
    (gateway/attestation/offline_revocation.py); the outcome says whether it was checked."""
    raw = path.read_bytes()
    when = at or datetime.now(UTC)
    roots = roots or Roots.pinned()
    given = Given([p.read_bytes() for p in crls], [p.read_bytes() for p in ocsp])
    if raw[:4].lower() in (b"11e0", b"12e0"):  # SPDM GET_MEASUREMENTS, as hex text
        return _gpu(raw, chain, when, wanted, roots, given=given)
    if raw.lstrip()[:1] == b"{":
        return _document(raw, when, wanted, roots, given=given)
    if is_tdx_quote(raw):
        return _tdx(raw, collateral, when, wanted, roots, given=given)
    if len(raw) != REPORT_SIZE:
        return Outcome(False, reasons=[f"unrecognised evidence ({len(raw)} bytes): expected an "
                                       f"SEV-SNP report ({REPORT_SIZE} bytes) or a TDX quote"])
    return _snp(raw, vcek, when, wanted, roots, given=given)


@dataclass(frozen=True)
class Given:
    """Revocation data from files: CRLs (DER) and OCSP responses (DER)."""

    crls: list[bytes]
    ocsp: list[bytes]


def is_tdx_quote(raw: bytes) -> bool:
    return len(raw) > 48 and raw[0:2] in (b"\x04\x00", b"\x05\x00") and raw[4:8] == \
        b"\x81\x00\x00\x00"


def _tdx(raw: bytes, collateral: Path | None, when: datetime, wanted: Wanted | None,
         roots: Roots, *, given: Given) -> Outcome:
    if collateral is None:
        return Outcome(False, reasons=["a TDX quote needs --collateral DIR (TCB Info, QE "
                                       "Identity, chains and CRLs saved from Intel PCS)"])
    try:
        quote = parse_quote(raw)
        endorsed = tdx_collateral(collateral_from_dir(collateral, quote), quote, roots.intel,
                                  given.crls)
        verified = verify_quote(raw, endorsed, at=when, root=roots.intel)
    except EvidenceError as exc:
        return Outcome(False, reasons=[str(exc)])
    revocation = tdx_revocation(endorsed)

    def problems(level: TrustLevel) -> list[str] | None:
        return level_tdx_problems(verified, level) if level.tdx else None

    return _judged({**verified.values(), **revocation.values()},
                   verified.quote.report.report_data, when, wanted, problems,
                   releases=lambda level: level.release_labels("tdx", tdx_registers(verified)))


def _gpu(raw: bytes, chain: Path | None, when: datetime, wanted: Wanted | None,
         roots: Roots, *, given: Given) -> Outcome:
    if chain is None:
        return Outcome(False, reasons=["NVIDIA GPU evidence needs --chain (the device "
                                       "certificate chain, PEM)"])
    try:
        chain_pem = chain.read_bytes()
        evidence = verify_gpu_evidence(bytes.fromhex(raw.decode().strip()), chain_pem,
                                       expected_nonce=None, at=when, root=roots.nvidia)
        revocation = gpu_revocation(chain_pem, given.ocsp, roots.nvidia, when)
    except (EvidenceError, ValueError) as exc:
        return Outcome(False, reasons=[str(exc) if isinstance(exc, EvidenceError)
                                       else "nvidia-gpu: evidence is not hex"])

    def problems(level: TrustLevel) -> list[str] | None:
        wanted = level.nvidia_gpu
        if wanted is None:
            return None
        rims = offline_rim_problems(evidence, wanted.rims, roots.nvidia_rim, when) \
            if wanted.rims else []
        return gpu_count_problems(1, wanted) + gpu_problems(evidence, wanted) + rims

    values: dict[str, object] = {"format": "nvidia-gpu", **rim_ids(evidence), **{
        f"measurement_{i}": v.hex() for i, v in sorted(evidence.measurements.items())},
        **revocation.values()}
    return _judged(values, evidence.requester_nonce, when, wanted, problems)


def _document(raw: bytes, when: datetime, wanted: Wanted | None, roots: Roots, *,
              given: Given) -> Outcome:
    """Every GPU of a backend's evidence document: each verified (chain, signature, OCSP from
    the part or --ocsp), all asked with the same nonce, none twice; every problem named."""
    if len(raw) > MAX_EVIDENCE_BYTES:
        return Outcome(False, reasons=[f"evidence larger than {MAX_EVIDENCE_BYTES // 1024} KiB"])
    try:
        parts = [p for p in parse_parts(raw) if p.get("format") == "nvidia-gpu"]
    except EvidenceError as exc:
        return Outcome(False, reasons=[str(exc)])
    if not parts:
        return Outcome(False, reasons=["the document has no nvidia-gpu part (an SEV-SNP report "
                                       "or TDX quote is verified from its own file)"])
    if len(parts) > MAX_GPUS:
        return Outcome(False, reasons=[f"{len(parts)} nvidia-gpu parts, more than {MAX_GPUS}"])
    values: dict[str, object] = {"format": "nvidia-gpu", "gpus": len(parts)}
    reasons: list[str] = []
    gpus: list[VerifiedGpu] = []
    for index, part in enumerate(parts):
        try:
            gpu, shown = _document_gpu(index, part, when, roots, given)
        except EvidenceError as exc:
            reasons.append(str(exc))
            continue
        gpus.append(gpu)
        values.update({f"gpu_{index}_{key}": value for key, value in shown.items()})
    reasons += _not_together(gpus)
    if reasons:
        return Outcome(False, values, reasons)

    def problems(level: TrustLevel) -> list[str] | None:
        wanted = level.nvidia_gpu
        if wanted is None:
            return None
        rims = [f"{gpu.label()}: {problem}" for gpu in gpus for problem in
                offline_rim_problems(gpu.evidence, wanted.rims, roots.nvidia_rim, when)] \
            if wanted.rims else []
        return gpus_problems(gpus, wanted) + rims

    return _judged(values, gpus[0].evidence.requester_nonce, when, wanted, problems)


def _document_gpu(index: int, part: Mapping[str, Any], when: datetime, roots: Roots,
                  given: Given) -> tuple[VerifiedGpu, dict[str, object]]:
    """One GPU part verified as the gateway does (any nonce: offline nothing was asked), its
    revocation from what it staples and --ocsp, and what to show about it."""
    gpu, _, stapled = verify_gpu_part(index, part, None, when, roots.nvidia)
    try:
        revocation = gpu_revocation(gpu_part_fields(part)[1], [*stapled, *given.ocsp],
                                    roots.nvidia, when)
    except EvidenceError as exc:
        raise EvidenceError(about_gpu(index, gpu.serial, exc)) from None
    shown = {"certificate_serial": gpu.serial, **rim_ids(gpu.evidence), **{
        f"measurement_{i}": v.hex() for i, v in sorted(gpu.evidence.measurements.items())},
        **revocation.values()}
    return gpu, shown


def _not_together(gpus: Sequence[VerifiedGpu]) -> list[str]:
    """GPUs of one document answer one request: the same nonce, and each GPU once."""
    problems = [f"nvidia-gpu: {gpu.label()} was asked with another nonce than "
                f"{gpus[0].label()} (not evidence of the same exchange)" for gpu in gpus
                if gpu.evidence.requester_nonce != gpus[0].evidence.requester_nonce]
    return problems + duplicate_gpus(gpus)


def rim_ids(evidence: GpuEvidence) -> dict[str, object]:
    """The RIMs that apply (what to save as files for an offline check), when it says."""
    try:
        versions = gpu_versions(evidence)
    except EvidenceError:
        return {}
    return {"driver_version": versions.driver, "vbios_version": versions.vbios,
            "driver_rim": versions.driver_rim, "vbios_rim": versions.vbios_rim}


def _snp(raw: bytes, vcek: Path | None, when: datetime, wanted: Wanted | None,
         roots: Roots, *, given: Given) -> Outcome:
    if vcek is None:
        return Outcome(False, reasons=["an SEV-SNP report needs --vcek (its endorsement key "
                                       "certificate, from AMD's KDS)"])
    try:
        endorsement = vcek.read_bytes()
        verified = verify_report(raw, endorsement, at=when, roots=roots.amd)
        revocation = snp_revocation(verified, endorsement, given.crls,
                                    roots.amd[verified.product], when)
    except EvidenceError as exc:
        return Outcome(False, reasons=[str(exc)])

    def problems(level: TrustLevel) -> list[str] | None:
        return level_snp_problems(verified, level) if level.sev_snp else None

    return _judged({**verified.values(), **revocation.values()},
                   verified.report.report_data, when, wanted, problems,
                   releases=lambda level: level.release_labels("sev-snp", snp_registers(verified)))


def _judged(values: dict[str, object], report_data: bytes, when: datetime,
            wanted: Wanted | None, problems: Callable[[TrustLevel], list[str] | None], *,
            releases: Callable[[TrustLevel], list[str]] = lambda level: []) -> Outcome:
    """Verified evidence, and when asked, whether it meets the trust level (and which signed
    release vouches for its measurement)."""
    outcome = Outcome(True, {**values, "report_data": report_data.hex(),
                             "verified_at": when.isoformat()})
    if wanted is None:
        return outcome
    found = problems(wanted.level) if wanted.level is not None else None
    if found is None:
        return Outcome(False, outcome.values, [f"policy has no trust level {wanted.name!r} for "
                                               f"{values['format']} evidence"])
    named = releases(wanted.level) if wanted.level is not None else []
    if named:  # the measurement is allowed because one verified release carries it whole
        outcome.values["measurement_from"] = ", ".join(named)
    outcome.reasons, outcome.ok = found, not found
    outcome.values["trust_level"] = f"{wanted.name}: {'met' if outcome.ok else 'not met'}"
    return outcome


def as_json(outcome: Outcome) -> str:
    return json.dumps({"ok": outcome.ok, **outcome.values, "reasons": outcome.reasons},
                      indent=2)
