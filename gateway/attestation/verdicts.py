"""Which trust levels verified evidence meets, and until when: a pure function of the evidence,
the levels in force, the key sets fetched so far and the time, so a policy reload re-evaluates
without fetching anything.

A level is met until the earliest of: the verification time plus the level's `max_age_s`, the
end of the SNP endorsement certificate, the nextUpdate of Intel's collateral, of every CRL and
OCSP response the evidence was checked against (Evidence.not_after), the expiry of the token
that satisfied the level's `token` requirement, and the end of the GPU RIMs' certificates (the
RIMs are obtained beforehand: gateway/attestation/rim_store.py), the earliest over all GPUs.
Every evidence kind the level lists must be present and meet it, and every GPU its GPU
requirements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.attestation.evidence import Evidence
from gateway.attestation.levels import (
    RimSource,
    TrustLevel,
    gpus_problems,
    level_snp_problems,
    level_tdx_problems,
    snp_registers,
    tdx_registers,
    token_problems,
)
from gateway.attestation.nvidia import GpuEvidence
from gateway.attestation.tokens import verify_token
from gateway.errors import EvidenceError

Levels = Sequence[tuple[str, str, TrustLevel]]  # (policy digest, level name, level)
KeySets = Callable[[str], Mapping[str, Any] | None]  # JWKS URL -> its keys, if fetched
# (source, GPU, now) -> (what its RIMs do not allow, until when they hold): RimStore.references
RimReferences = Callable[[RimSource, GpuEvidence, float], tuple[list[str], float]]


def verdicts(evidence: Evidence, levels: Levels, keys: KeySets, now: float,
             rims: RimReferences | None = None) -> dict[tuple[str, str], float]:
    """(policy digest, level name) -> until when it is met, for the levels that are."""
    met: dict[tuple[str, str], float] = {}
    for policy, name, level in levels:
        until = level_met(evidence, level, keys, now, rims)
        if until is not None:
            met[(policy, name)] = until
    return met


def releases_behind(evidence: Evidence, levels: Levels,
                    met: Mapping[tuple[str, str], float]) -> list[str]:
    """The signed releases (measurements_from) whose measurement this evidence matched as a
    whole in a level it meets: what the verdict rests on besides the hardware, for the log."""
    measured = [("sev-snp", snp_registers(evidence.snp))] if evidence.snp else []
    if evidence.tdx is not None:
        measured.append(("tdx", tdx_registers(evidence.tdx)))
    return sorted({label for policy, name, level in levels if (policy, name) in met
                   for tee, registers in measured
                   for label in level.release_labels(tee, registers)})


def key_set_urls(levels: Levels) -> set[str]:
    """The JWKS URLs the levels name: the only places token keys are fetched from."""
    return {level.token.jwks_url for _, _, level in levels if level.token is not None}


def rim_sources(levels: Levels) -> list[RimSource]:
    """Where the levels say GPU reference values come from."""
    return [level.nvidia_gpu.rims for _, _, level in levels
            if level.nvidia_gpu is not None and level.nvidia_gpu.rims is not None]


def level_met(evidence: Evidence, level: TrustLevel, keys: KeySets, now: float,
              rims: RimReferences | None = None) -> float | None:
    """Until when the evidence meets the level, or None (a level naming RIMs, judged
    without a RimStore, is not met)."""
    if not _hardware_meets(evidence, level):
        return None
    rims_until = _rims_until(evidence, level, rims, now)
    if rims_until is None:
        return None
    until = min(evidence.verified_at + level.max_age_s, evidence.not_after(), rims_until)
    if level.token is None:
        return until
    token_until, _ = _token_until(evidence, level, keys, now)
    return None if token_until is None else min(until, token_until)


def _token_until(evidence: Evidence, level: TrustLevel, keys: KeySets,
                 now: float) -> tuple[float | None, list[str]]:
    """Until when the first token that satisfies the level's `token` requirement holds, or
    None and why each token does not."""
    wanted = level.token
    assert wanted is not None  # noqa: S101 (asked only of a level that names a token)
    jwks = keys(wanted.jwks_url)
    if jwks is None:
        return None, [f"token: the key set {wanted.jwks_url} could not be fetched"]
    if not evidence.tokens:
        return None, ["token: the evidence carries no token"]
    problems: list[str] = []
    for index, token in enumerate(evidence.tokens):
        try:
            verified = verify_token(token, jwks, issuer=wanted.issuer, now=now,
                                    max_age_s=level.max_age_s, nonce_claim=wanted.nonce_claim,
                                    expected_nonce=evidence.expected_nonce,
                                    algorithms=tuple(wanted.algorithms))
        except EvidenceError as exc:
            problems.append(f"token {index}: {exc}")
            continue
        found = token_problems(verified, wanted)
        if not found:
            return verified.expires_at, []
        problems += [f"token {index}: {problem}" for problem in found]
    return None, problems


def level_problems(evidence: Evidence, level: TrustLevel, keys: KeySets, now: float,
                   rims: RimReferences | None = None) -> list[str]:
    """Why the evidence does not meet the level, every reason at once, for people to read
    (the studio's Backends view); the verdict itself is level_met's, and when it finds no
    reason here it still says "not met"."""
    until = level_met(evidence, level, keys, now, rims)
    if until is not None and until > now:
        return []
    problems: list[str] = []
    if level.sev_snp is not None:
        problems += level_snp_problems(evidence.snp, level) if evidence.snp is not None \
            else ["sev-snp: the evidence has no SEV-SNP report"]
    if level.tdx is not None:
        problems += level_tdx_problems(evidence.tdx, level) if evidence.tdx is not None \
            else ["tdx: the evidence has no TDX quote"]
    problems += gpu_level_problems(evidence, level, now, rims)
    if level.token is not None:
        problems += _token_until(evidence, level, keys, now)[1]
    if evidence.verified_at + level.max_age_s <= now:
        problems.append(f"the evidence is older than the level's max_age_s ({level.max_age_s})")
    if evidence.not_after() <= now:
        problems.append("an endorsement certificate, CRL or OCSP answer it was checked "
                        "against has lapsed")
    return problems or ["not met"]


def _hardware_meets(evidence: Evidence, level: TrustLevel) -> bool:
    if level.sev_snp is not None and (
            evidence.snp is None or level_snp_problems(evidence.snp, level)):
        return False
    if level.tdx is not None and (
            evidence.tdx is None or level_tdx_problems(evidence.tdx, level)):
        return False
    return level.nvidia_gpu is None or not gpus_problems(evidence.gpus, level.nvidia_gpu)


def _rims_until(evidence: Evidence, level: TrustLevel, rims: RimReferences | None,
                now: float) -> float | None:
    """Until when every GPU's RIMs allow its measurements (forever: the level names none)."""
    wanted = level.nvidia_gpu.rims if level.nvidia_gpu is not None else None
    if wanted is None:
        return float("inf")
    if rims is None or not evidence.gpus:
        return None
    until = float("inf")
    for gpu in evidence.gpus:
        problems, held = rims(wanted, gpu.evidence, now)
        if problems:
            return None
        until = min(until, held)
    return until


def gpu_level_problems(evidence: Evidence, level: TrustLevel, now: float,
                       rims: RimReferences | None = None) -> list[str]:
    """Why the GPUs do not meet the level's GPU requirements, every GPU named (for the log:
    the verdict itself is level_met's)."""
    wanted = level.nvidia_gpu
    if wanted is None:
        return []
    problems = gpus_problems(evidence.gpus, wanted)
    if wanted.rims is not None and rims is not None:
        problems += [f"{gpu.label()}: {problem}" for gpu in evidence.gpus
                     for problem in rims(wanted.rims, gpu.evidence, now)[0]]
    return problems
