"""The privacy stage of the pipeline: admit what cannot be scanned only as the policy says,
detect over every piece of data the request carries, let the policy decide, rewrite in place.
Nothing is rewritten, let alone sent, before the decision is known."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from gateway.api.endpoint import ApiRequest
from gateway.api.structure import Scan
from gateway.errors import InvalidRequest, ServiceUnavailable
from gateway.fhe.client import ScorerError
from gateway.fhe.semantic import SemanticScorer
from gateway.observability.facts import RequestFacts
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.policy.active import ActivePolicy
from gateway.policy.evaluate import Decision, Facts, evaluate
from gateway.privacy.engine import DetectionEngine, DetectorFailed
from gateway.privacy.spans import Span
from gateway.privacy.vault import Entry, Vault, reserved_in

log = get_logger("veil.privacy")


class PolicyBlocked(InvalidRequest):
    """400 naming the rule and the entity types found (never the values)."""

    def __init__(self, decision: Decision, found: Counter[str]) -> None:
        super().__init__(f"Request blocked by policy (rule {decision.rule}): it contains "
                         f"{', '.join(sorted(found))}.", code="sensitive_data_blocked")
        self.decision = decision


def admit(scan: Scan, active: ActivePolicy, facts: RequestFacts) -> None:
    """What the detectors cannot read, and fields the gateway does not know, pass only as the
    policy says: attachments are refused unless it forwards them (and the audit record counts
    them); unknown fields are scanned unless it refuses them."""
    policy = active.policy
    if scan.unknown and policy.unknown_fields == "refuse":
        path = scan.unknown[0]
        raise InvalidRequest(f"'{path}' is not a field this gateway knows, and the policy "
                             "refuses unknown fields.", param=path, code="unknown_field")
    if not scan.attachments:
        return
    if policy.attachments == "refuse":
        first = scan.attachments[0]
        raise InvalidRequest(
            f"'{first.path}' carries content the detectors cannot read ({first.kind}), and "
            "the policy refuses attachments (attachments: forward allows them).",
            param=first.path, code="attachment_refused")
    facts.attachments = dict(Counter(a.kind for a in scan.attachments))


class PrivacyStage:
    def __init__(self, engine: DetectionEngine, metrics: Metrics,
                 semantic: SemanticScorer | None = None) -> None:
        self.engine = engine
        self._metrics = metrics
        self.semantic = semantic

    async def protect(self, request: ApiRequest, active: ActivePolicy, tenant: str,
                      facts: RequestFacts, seed: Sequence[Entry] = ()) -> tuple[Vault, Decision]:
        """Rewrite the request's data in place; return the vault that restores the reply and
        the decision (raise `PolicyBlocked` when it is to block). `seed`: the mapping of the
        stored response this request continues, so its placeholders keep their values."""
        scan = request.scan
        admit(scan, active, facts)
        rules = active.policy.semantic
        slots = scan.slots if active.policy.scans or rules else []
        texts = [slot.text for slot in slots]
        vault = Vault(reserved_in(texts), seed)
        if not slots:  # nothing to look at: the policy's decision for a clean request
            return vault, self._clean(active, facts)
        # Scoring (embedding, encryption, the scorer's round trip) runs beside detection.
        scoring = asyncio.create_task(self._scores(texts, active, facts)) if rules else None
        try:
            spans = await self._detect(scan, texts, active, facts) if active.policy.scans \
                else [[] for _ in texts]
        except BaseException:
            if scoring is not None:
                scoring.cancel()
            raise
        facts.stage("detect")
        scores = await scoring if scoring is not None else {}
        findings = active.masker.conversation_findings(texts, spans)
        if not any(findings) and not scores:  # nothing to decide on and nothing to rewrite
            facts.stage("mask")
            return vault, self._clean(active, facts)
        found = Counter(f.entity for per_text in findings for f in per_text)
        decision = evaluate(active.loaded, Facts(tenant, request.endpoint.name, request.model,
                                                 found, scores))
        facts.entities = dict(found)
        facts.data_classes = decision.data_classes
        facts.rule = facts.rule or decision.rule
        if decision.outcome == "block":
            facts.decision, facts.rule = "blocked", decision.rule
            self._metrics.blocked.labels(decision.rule).inc()
            raise PolicyBlocked(decision, found)
        result = active.masker.rewrite(texts, findings, tenant, vault)
        for slot, before, after in zip(slots, texts, result.texts, strict=True):
            if after != before:
                slot.set(after)
        scan.finish()
        for entity, count in result.counts.items():
            self._metrics.entities.labels(entity).inc(count)
        facts.detectors.update(result.detectors)
        facts.stage("mask")
        return result.vault, decision

    @staticmethod
    def _clean(active: ActivePolicy, facts: RequestFacts) -> Decision:
        facts.rule = facts.rule or active.clean.rule
        facts.data_classes = active.clean.data_classes
        return active.clean

    async def _scores(self, texts: list[str], active: ActivePolicy,
                      facts: RequestFacts) -> dict[str, float]:
        if self.semantic is None:
            return self._scorer_failed("encrypted scoring is not configured (fhe.scorers)",
                                       active, facts)
        try:
            scores = await self.semantic.scores(texts, active.policy.semantic)
        except ScorerError as exc:
            return self._scorer_failed(str(exc), active, facts)
        facts.semantic = {key: round(score, 3) for key, score in scores.items()}
        return scores

    def _scorer_failed(self, reason: str, active: ActivePolicy,
                       facts: RequestFacts) -> dict[str, float]:
        """Closed by default: refuse. Open only when the policy says so: no scores."""
        if active.policy.fail_mode.scorer == "closed":
            log.error("scorer_failed", reason=reason)
            raise ServiceUnavailable("The semantic scorer failed; the request was not "
                                     "forwarded.", code="scorer_failed")
        log.warning("scorer_failed_open", reason=reason)
        self._metrics.failed_open.labels("scorer").inc()
        facts.rule = "fail_mode.scorer=open"
        return {}

    async def _detect(self, scan: Scan, texts: list[str], active: ActivePolicy,
                      facts: RequestFacts) -> list[list[Span]]:
        if not texts:
            return []
        read, offsets = scan.for_detection(texts)
        try:
            found = await self.engine.detect(read, active.selection)
        except DetectorFailed:
            if active.policy.fail_mode.detector == "closed":
                raise
            # The policy says so explicitly: forward what the detectors did not see.
            # Deny-list terms still apply (they need no detector).
            log.warning("detector_failed_open", policy=active.loaded.name)
            self._metrics.failed_open.labels("detector").inc()
            facts.rule = "fail_mode.detector=open"
            return [[] for _ in texts]
        return [_own(spans, offset) for spans, offset in zip(found, offsets, strict=True)]


def _own(spans: list[Span], offset: int) -> list[Span]:
    """Spans found in a value read after its key, moved back to the value's own offsets
    (what falls in the key is the key's own slot's business)."""
    if not offset:
        return spans
    return [Span(max(s.start, offset) - offset, s.end - offset, s.entity, s.score, s.detector)
            for s in spans if s.end > offset]
