"""`veil attest verify`: verify evidence from files, offline, and say why it is or is not
trusted. The format is detected from the content; the exit code is 0 only when the evidence
verifies (and, with --policy and --level, meets that trust level)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gateway.attestation.errors import EvidenceError
from gateway.attestation.levels import TrustLevel, snp_problems, tdx_problems
from gateway.attestation.snp import REPORT_SIZE, verify_report
from gateway.attestation.tdx import collateral_from_dir, parse_quote, verify_quote
from gateway.policy.loader import load_policy


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
                         at: datetime | None, policy: Path | None,
                         level: str | None) -> Outcome:
    raw = path.read_bytes()
    when = at or datetime.now(UTC)
    if is_tdx_quote(raw):
        return _tdx(raw, collateral, when, policy, level)
    if len(raw) != REPORT_SIZE:
        return Outcome(False, reasons=[f"unrecognised evidence ({len(raw)} bytes): expected an "
                                       f"SEV-SNP report ({REPORT_SIZE} bytes) or a TDX quote"])
    return _snp(raw, vcek, when, policy, level)


def is_tdx_quote(raw: bytes) -> bool:
    return len(raw) > 48 and raw[0:2] in (b"\x04\x00", b"\x05\x00") and raw[4:8] == \
        b"\x81\x00\x00\x00"


def _tdx(raw: bytes, collateral: Path | None, when: datetime, policy: Path | None,
         level: str | None) -> Outcome:
    if collateral is None:
        return Outcome(False, reasons=["a TDX quote needs --collateral DIR (TCB Info, QE "
                                       "Identity, chains and CRLs saved from Intel PCS)"])
    try:
        verified = verify_quote(raw, collateral_from_dir(collateral, parse_quote(raw)), at=when)
    except EvidenceError as exc:
        return Outcome(False, reasons=[str(exc)])
    outcome = Outcome(True, dict(verified.values()))
    outcome.values["report_data"] = verified.quote.report.report_data.hex()
    outcome.values["verified_at"] = when.isoformat()
    if policy is not None and level is not None:
        wanted = _level(policy, level)
        if wanted is None or wanted.tdx is None:
            return Outcome(False, outcome.values, [f"policy has no tdx trust level {level!r}"])
        outcome.reasons = tdx_problems(verified, wanted.tdx)
        outcome.ok = not outcome.reasons
        outcome.values["trust_level"] = f"{level}: {'met' if outcome.ok else 'not met'}"
    return outcome


def _level(policy: Path, level: str) -> TrustLevel | None:
    return load_policy(policy).policy.trust_levels.get(level)


def _snp(raw: bytes, vcek: Path | None, when: datetime, policy: Path | None,
         level: str | None) -> Outcome:
    if vcek is None:
        return Outcome(False, reasons=["an SEV-SNP report needs --vcek (its endorsement key "
                                       "certificate, from AMD's KDS)"])
    try:
        verified = verify_report(raw, vcek.read_bytes(), at=when)
    except EvidenceError as exc:
        return Outcome(False, reasons=[str(exc)])
    outcome = Outcome(True, dict(verified.values()))
    outcome.values["report_data"] = verified.report.report_data.hex()
    outcome.values["verified_at"] = when.isoformat()
    if policy is not None and level is not None:
        wanted = _level(policy, level)
        if wanted is None or wanted.sev_snp is None:
            return Outcome(False, outcome.values, [f"policy has no sev-snp trust level "
                                                   f"{level!r}"])
        outcome.reasons = snp_problems(verified, wanted.sev_snp)
        outcome.ok = not outcome.reasons
        outcome.values["trust_level"] = f"{level}: {'met' if outcome.ok else 'not met'}"
    return outcome


def as_json(outcome: Outcome) -> str:
    return json.dumps({"ok": outcome.ok, **outcome.values, "reasons": outcome.reasons},
                      indent=2)
