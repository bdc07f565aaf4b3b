"""`veil attest verify`: verify evidence from files, offline, and say why it is or is not
trusted. The format is detected from the content; the exit code is 0 only when the evidence
verifies (and, with --policy and --level, meets that trust level)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gateway.attestation.errors import EvidenceError
from gateway.attestation.levels import snp_problems
from gateway.attestation.snp import REPORT_SIZE, verify_report
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


def verify_evidence_file(path: Path, *, vcek: Path | None, at: datetime | None,
                         policy: Path | None, level: str | None) -> Outcome:
    raw = path.read_bytes()
    when = at or datetime.now(UTC)
    if len(raw) != REPORT_SIZE:
        return Outcome(False, reasons=[f"unrecognised evidence ({len(raw)} bytes): expected an "
                                       f"SEV-SNP report ({REPORT_SIZE} bytes)"])
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
        levels = load_policy(policy).policy.trust_levels
        wanted = levels.get(level)
        if wanted is None or wanted.sev_snp is None:
            return Outcome(False, outcome.values, [f"policy has no sev-snp trust level {level!r}"
                                                   f" (has: {', '.join(sorted(levels))})"])
        outcome.reasons = snp_problems(verified, wanted.sev_snp)
        outcome.ok = not outcome.reasons
        outcome.values["trust_level"] = f"{level}: {'met' if outcome.ok else 'not met'}"
    return outcome


def as_json(outcome: Outcome) -> str:
    return json.dumps({"ok": outcome.ok, **outcome.values, "reasons": outcome.reasons},
                      indent=2)
