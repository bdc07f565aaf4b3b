"""Verify a Veil gateway before trusting it with a prompt: the client's side of the gateway's
own evidence (gateway/attestation/self_evidence.py).

Read the certificate the gateway presents, ask its evidence with a fresh nonce over a connection
pinned to that certificate (the backend fetcher, attestation/fetch.py), verify the evidence the
way the gateway verifies a backend (attestation/evidence.py) with report_data bound to that
nonce, that certificate's key and the policy set digest the gateway states, judge it against a
trust level of a policy file (attestation/verdicts.py), and compare the policies stated with
the ones expected. Nothing is taken from the gateway's word alone: the policy list it states
must hash to the digest the hardware signed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.attestation.binding import GATEWAY_BINDING, gateway_binding, policy_set_digest
from gateway.attestation.collateral import CollateralStore
from gateway.attestation.evidence import Evidence, EvidenceVerifier, Fetched
from gateway.attestation.fetch import EvidenceFetcher, Presented, Received
from gateway.attestation.jwks import JwksCache
from gateway.attestation.levels import TrustLevel, level_snp_problems, level_tdx_problems
from gateway.attestation.transport import NetworkTransport, Transport
from gateway.attestation.trust_roots import Roots
from gateway.attestation.verdicts import key_set_urls, level_met
from gateway.errors import EvidenceError
from gateway.settings import AttestationSettings, BackendAttestation, BackendSettings

# A client fetches what the evidence leaves out (VCEK, CRLs, TDX collateral) from AMD KDS and
# Intel PCS, and keeps nothing on disk unless told where.
CLIENT_ATTESTATION = AttestationSettings(cache_dir=None)


@dataclass(frozen=True)
class Expected:
    """What the client requires: a trust level (from a policy file) the gateway's hardware
    evidence must meet, and the policy set digests it may run (more than one: a rollout)."""

    level_name: str
    level: TrustLevel
    policy_digests: frozenset[str]

    @classmethod
    def of(cls, level_name: str, level: TrustLevel, policy_digests: Collection[str]) -> Expected:
        """Digests written as "sha256:<hex>" or bare hex, any case."""
        if not policy_digests:
            raise ValueError("expect at least one policy set digest (`veil policy check` "
                             "prints the one of a gateway's policies.files)")
        return cls(level_name, level, frozenset(normalised_digest(d) for d in policy_digests))


def normalised_digest(text: str) -> str:
    digest = text.strip().lower().removeprefix("sha256:")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{text!r} is not a SHA-256 digest (64 hex digits)")
    return "sha256:" + digest


@dataclass(frozen=True)
class GatewayVerdict:
    ok: bool
    key_sha256: bytes | None  # of the attested TLS key (SPKI): what later requests pin
    until: float  # when the verdict lapses (0 when refused)
    values: dict[str, object] = field(default_factory=dict)  # what was measured and stated
    reasons: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = "VERIFIED" if self.ok else "REFUSED"
        return [head, *(f"  {key}: {value}" for key, value in self.values.items()),
                *(f"  reason: {reason}" for reason in self.reasons)]


async def verify_gateway(url: str, expected: Expected, *, roots: Roots | None = None,
                         attestation: AttestationSettings = CLIENT_ATTESTATION,
                         transport: Transport | None = None, timeout_s: float = 10.0,
                         clock: Callable[[], float] = time.time) -> GatewayVerdict:
    """`roots`: what the hardware's chains must end at (default: the ones shipped, AMD's from
    `attestation.amd_roots_dir`); `transport`: the network unless given."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return _refused([f"{url!r}: a gateway is verified over https:// only (its evidence "
                         "binds its TLS key)"])
    network = NetworkTransport() if transport is None else None
    through = transport or network
    assert through is not None  # noqa: S101 (one of the two is set)
    try:
        return await _verify(f"https://{parts.netloc}", expected, transport=through,
                             roots=roots or Roots.pinned(attestation.amd_roots_dir),
                             attestation=attestation, timeout_s=timeout_s, clock=clock)
    finally:
        if network is not None:
            await network.close()


async def _verify(origin: str, expected: Expected, *, transport: Transport, roots: Roots,
                  attestation: AttestationSettings, timeout_s: float,
                  clock: Callable[[], float]) -> GatewayVerdict:
    gateway = BackendSettings(name="gateway", url=origin,
                              attestation=BackendAttestation(timeout_s=timeout_s))
    fetcher = EvidenceFetcher(transport, clock)
    try:
        presented = await fetcher.presented(gateway)
        received = await fetcher.fetch(gateway, presented)
        stated, policies = stated_policies(received.body)
        evidence = await EvidenceVerifier(
            roots, CollateralStore(attestation, transport, clock), clock).verify(
            _bound(presented, received, stated))
    except EvidenceError as exc:
        return _refused([str(exc)])
    values: dict[str, object] = {**measured(evidence), "policy_set_digest": stated,
                                 "policies": ", ".join(f"{p['name']} {p['digest']}"
                                                       for p in policies),
                                 "tls_key_sha256": presented.key_sha256.hex()}
    reasons = []
    until = await _level_until(evidence, expected, transport, clock)
    if until is None:
        reasons.append(f"trust level {expected.level_name!r} not met"
                       + "".join(f": {p}" for p in level_problems(evidence, expected.level)))
    if stated not in expected.policy_digests:
        reasons.append(f"the gateway runs policy set {stated}, not one expected "
                       f"({', '.join(sorted(expected.policy_digests))})")
    values["trust_level"] = f"{expected.level_name}: {'met' if until is not None else 'not met'}"
    if reasons:
        return GatewayVerdict(False, None, 0.0, values, reasons)
    assert until is not None  # noqa: S101 (no reasons: the level is met)
    return GatewayVerdict(True, presented.key_sha256, until, values)


def stated_policies(body: bytes) -> tuple[str, list[Mapping[str, str]]]:
    """The policy set digest the gateway states, and the policies it lists, which must hash to
    it (the digest is what the hardware signs; the list is what a person reads)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EvidenceError("evidence is not JSON") from None
    if not isinstance(document, dict) or document.get("binding") != GATEWAY_BINDING:
        raise EvidenceError(f"not a gateway's evidence (no binding {GATEWAY_BINDING!r}): a "
                            "backend's, or an older gateway")
    stated, policies = document.get("policy_set_digest"), document.get("policies")
    if not isinstance(stated, str) or not isinstance(policies, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str)
            and isinstance(p.get("digest"), str) for p in policies):
        raise EvidenceError("gateway evidence needs policy_set_digest and policies "
                            "[{name, digest}]")
    try:
        stated = normalised_digest(stated)
    except ValueError as exc:
        raise EvidenceError(f"policy_set_digest: {exc}") from None
    if policy_set_digest([(p["name"], p["digest"]) for p in policies]) != stated:
        raise EvidenceError("the policies listed do not hash to the policy_set_digest stated")
    return stated, policies


def _bound(presented: Presented, received: Received, stated: str) -> Fetched:
    return Fetched(received.body, gateway_binding(received.nonce, presented.key_sha256, stated),
                   presented.sha256)


async def _level_until(evidence: Evidence, expected: Expected, transport: Transport,
                       clock: Callable[[], float]) -> float | None:
    """Until when the evidence meets the level (its key sets fetched first, if it names one);
    a level naming GPU RIMs is not met: a gateway has no GPU to measure."""
    jwks = JwksCache(transport, clock)
    levels = [("", expected.level_name, expected.level)]
    await jwks.refresh(key_set_urls(levels))
    return level_met(evidence, expected.level, jwks.keys, clock())


def level_problems(evidence: Evidence, level: TrustLevel) -> list[str]:
    """Why the hardware evidence misses the level, as far as the level's checks say."""
    problems = []
    if level.sev_snp is not None:
        problems += level_snp_problems(evidence.snp, level) if evidence.snp \
            else ["the level needs sev-snp evidence"]
    if level.tdx is not None:
        problems += level_tdx_problems(evidence.tdx, level) if evidence.tdx \
            else ["the level needs tdx evidence"]
    return problems


def measured(evidence: Evidence) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if evidence.snp is not None:
        values.update(evidence.snp.values())
    if evidence.tdx is not None:
        values.update(evidence.tdx.values())
    return values


def _refused(reasons: list[str]) -> GatewayVerdict:
    return GatewayVerdict(False, None, 0.0, {}, reasons)
