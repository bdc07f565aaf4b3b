"""The protect stage: what a policy makes of what the detectors and the scorer found.

    protect(texts, compiled policy, detections, scores) -> Protection

Pure: everything it needs is gathered first (the request's data by `gateway.api`, findings
and scores by `gateway.inspection`), so the gateway, `veil policy explain` and `veil policy
test` all reach the same decision from the same inputs, and a passing policy test proves what
the gateway will do. It sits above `policy/` (the format and its evaluation) and `privacy/`
(detection, masking, restore), which know nothing of each other; this module joins them:
a policy compiled into masking rules and a detector selection, and the decision applied.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.api.structure import Attachment
from gateway.errors import InvalidRequest, PolicyBlocked
from gateway.keys.material import Deriver
from gateway.observability.facts import Decided
from gateway.policy.active import ActivePolicy, PolicySet
from gateway.policy.evaluate import Decision, Facts, evaluate
from gateway.policy.loader import LoadedPolicy
from gateway.policy.schema import Policy
from gateway.privacy.engine import Selection
from gateway.privacy.masker import Masker, MaskingRules
from gateway.privacy.spans import Span
from gateway.privacy.vault import Entry, Vault, reserved_in


def masking_rules(policy: Policy) -> MaskingRules:
    detectors = policy.detectors
    return MaskingRules(
        default_threshold=detectors.default_threshold, thresholds=dict(detectors.thresholds),
        default_action=policy.default_action, actions=dict(policy.actions),
        allow_list=tuple(detectors.allow_list),
        deny_list={entity: tuple(terms) for entity, terms in detectors.deny_list.items()})


def selection(policy: Policy) -> Selection:
    return Selection(frozenset(policy.detectors.builtin), tuple(policy.detectors.plugins))


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy ready to decide: its masker and the detectors it runs."""

    active: ActivePolicy
    masker: Masker
    selection: Selection

    @property
    def loaded(self) -> LoadedPolicy:
        return self.active.loaded

    @property
    def policy(self) -> Policy:
        return self.active.policy

    @property
    def digest(self) -> str:
        return self.active.digest

    @property
    def scans(self) -> bool:
        """Whether anything looks at the data: detectors, deny-list terms, semantic rules."""
        return self.policy.scans or bool(self.policy.semantic)


@dataclass(frozen=True)
class CompiledSet:
    source: PolicySet
    policies: tuple[CompiledPolicy, ...]  # in the order of the set: the first match decides

    def select(self, tenant: str, route: str, model: str) -> CompiledPolicy:
        chosen = self.source.select(tenant, route, model)
        return next(c for c in self.policies if c.active is chosen)

    @property
    def selections(self) -> list[Selection]:
        return [c.selection for c in self.policies]


def compile_policy(active: ActivePolicy, hash_secret: bytes | Deriver | None) -> CompiledPolicy:
    policy = active.policy
    return CompiledPolicy(active, Masker(masking_rules(policy), hash_secret), selection(policy))


def compile_set(policies: PolicySet, hash_secret: bytes | Deriver | None) -> CompiledSet:
    return CompiledSet(policies, tuple(compile_policy(a, hash_secret)
                                       for a in policies.policies))


@dataclass(frozen=True)
class Detections:
    spans: Sequence[Sequence[Span]]  # per text
    failed_open: bool = False  # a detector failed and the policy forwards anyway
    cpu_seconds: float = 0.0  # what detection cost (here and in the NER workers)


@dataclass(frozen=True)
class Scores:
    values: Mapping[str, float] = field(default_factory=dict)  # "scorer/model/label" -> score
    failed_open: bool = False  # the scorer failed and the policy forwards anyway


@dataclass(frozen=True)
class Protection:
    decision: Decision
    vault: Vault
    texts: tuple[str, ...] | None  # the texts as they may leave; None when blocked
    findings: tuple[tuple[Span, ...], ...]  # per text, what the policy acts on
    found: Mapping[str, int]  # entity -> findings
    masked: Mapping[str, int]  # entity -> findings rewritten
    detectors: frozenset[str]  # detectors whose findings were acted on
    scores: Mapping[str, float]
    failed_open: tuple[str, ...]  # every fail-open that happened: detector, scorer
    attachments: Mapping[str, int]  # kind -> forwarded unscanned
    detection_cpu_s: float = 0.0

    @property
    def blocked(self) -> bool:
        return self.decision.outcome == "block"

    def facts(self) -> Decided:
        """What the audit record and the metrics keep of it: types, counts, names."""
        return Decided(
            outcome=self.decision.outcome, rule=self.decision.rule,
            data_classes=self.decision.data_classes, entities=dict(self.found),
            masked=dict(self.masked), detectors=tuple(sorted(self.detectors)),
            scores={k: round(v, 3) for k, v in self.scores.items()} if self.scores else None,
            attachments=dict(self.attachments), failed_open=self.failed_open,
            detection_cpu_s=self.detection_cpu_s)

    def refusal(self) -> PolicyBlocked:
        return PolicyBlocked(self.decision.rule, sorted(self.found))


def admit(attachments: Sequence[Attachment], unknown: Sequence[str],
          policy: Policy) -> dict[str, int]:
    """What the detectors cannot read, and fields the gateway does not know, pass only as the
    policy says: attachments are refused unless it forwards them (then they are counted, by
    kind, for the audit record); unknown fields are scanned unless it refuses them."""
    if unknown and policy.unknown_fields == "refuse":
        path = unknown[0]
        raise InvalidRequest(f"'{path}' is not a field this gateway knows, and the policy "
                             "refuses unknown fields.", param=path, code="unknown_field")
    if not attachments:
        return {}
    if policy.attachments == "refuse":
        first = attachments[0]
        raise InvalidRequest(
            f"'{first.path}' carries content the detectors cannot read ({first.kind}), and "
            "the policy refuses attachments (attachments: forward allows them).",
            param=first.path, code="attachment_refused")
    return dict(Counter(a.kind for a in attachments))


def protect(texts: Sequence[str], compiled: CompiledPolicy, detections: Detections,
            scores: Scores, *, tenant: str, seed: Sequence[Entry] = (),
            attachments: Mapping[str, int] | None = None, keyed: bool = False) -> Protection:
    """Decide on the findings and the scores, and (unless the decision is to block) rewrite
    the texts. `seed`: the placeholder mapping of a stored response this request continues;
    placeholder-shaped text in `texts` is reserved, so a placeholder never collides with text
    the client wrote. `keyed`: placeholders keyed per tenant rather than numbered, where
    nothing is restored and distinct values must stay distinct (embeddings)."""
    masker = compiled.masker
    vault = Vault(reserved_in(texts), seed, masker.pseudonym_key(tenant) if keyed else None)
    findings = masker.conversation_findings(texts, detections.spans)
    found = Counter(span.entity for per_text in findings for span in per_text)
    decision = evaluate(compiled.loaded, Facts("", "", "", found, scores.values)) \
        if found or scores.values else compiled.active.clean
    failed_open = (("detector",) if detections.failed_open else ()) + \
        (("scorer",) if scores.failed_open else ())
    result = masker.rewrite(texts, findings, tenant, vault) \
        if decision.outcome != "block" else None
    return Protection(
        decision, vault, texts=tuple(result.texts) if result else None,
        findings=tuple(tuple(f) for f in findings), found=dict(found),
        masked=dict(result.counts) if result else {},
        detectors=frozenset(result.detectors) if result else frozenset(),
        scores=dict(scores.values), failed_open=failed_open,
        attachments=dict(attachments or {}), detection_cpu_s=detections.cpu_seconds)
