"""`veil attest verify`: verify evidence from files, offline, and say why it is or is not
trusted. The format is detected from the content; the exit code is 0 only when the evidence
verifies (and, with --policy and --level, meets that trust level). Loading the policy is the
CLI's business: this module is handed the level, so attestation depends on no policy code."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gateway.attestation.levels import (
    TrustLevel,
    gpu_problems,
    level_snp_problems,
    level_tdx_problems,
    snp_registers,
    tdx_registers,
)
from gateway.attestation.nvidia import GpuEvidence, verify_gpu_evidence
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
        return gpu_problems(evidence, wanted) + rims

    values: dict[str, object] = {"format": "nvidia-gpu", **_rim_ids(evidence), **{
        f"measurement_{i}": v.hex() for i, v in sorted(evidence.measurements.items())},
        **revocation.values()}
    return _judged(values, evidence.requester_nonce, when, wanted, problems)


def _rim_ids(evidence: GpuEvidence) -> dict[str, object]:
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
