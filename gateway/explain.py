"""Run a prompt, or a file of cases, through a policy the way the gateway does: the same
detection engine (so the same detectors in the same order), the same pure protect stage.
Semantic scores come from the case: what the scorer would answer, as the gateway decrypts it.
`veil policy explain` prints the account; `veil policy test` checks each case's expectation,
like OPA's tests, so a passing policy test shows what the gateway will decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.api import ApiRequest
from gateway.inspection import Inspector, Reading
from gateway.policy.active import ActivePolicy
from gateway.policy.cases import Case
from gateway.policy.evaluate import Facts, evaluate
from gateway.policy.loader import LoadedPolicy
from gateway.privacy.engine import DetectionEngine
from gateway.protect import CompiledPolicy, Protection, Scores, admit, compile_policy, protect

EXPLAIN_HASH_KEY = b"veil-explain-only-key"  # hash tokens here are not the gateway's


@dataclass(frozen=True)
class Analysis:
    prompt: str
    protection: Protection

    @property
    def findings(self) -> list[tuple[str, str, str, float]]:
        """(entity, the text found, detector, score) for each finding the policy acts on."""
        return [(s.entity, self.prompt[s.start:s.end], s.detector, s.score)
                for s in self.protection.findings[0]] if self.protection.findings else []

    @property
    def sent(self) -> str | None:
        """What would be sent upstream, or None when the request is blocked."""
        texts = self.protection.texts
        return texts[0] if texts is not None else None


def compiled_for(loaded: LoadedPolicy) -> CompiledPolicy:
    active = ActivePolicy(loaded, evaluate(loaded, Facts("", "", "", {})))
    return compile_policy(active, EXPLAIN_HASH_KEY)


async def analyze(loaded: LoadedPolicy, prompts: Sequence[tuple[str, Mapping[str, float], str]],
                  ner_workers: int = 1) -> list[Analysis]:
    """Each (prompt, scores, tenant) through detection and the protect stage."""
    compiled = compiled_for(loaded)
    engine = DetectionEngine(ner_workers)
    try:
        await engine.prepare([compiled.selection])
        inspector = Inspector(engine)
        return [Analysis(prompt, await protected(inspector, compiled, [prompt],
                                                 Reading.plain([prompt]), scores=scores,
                                                 tenant=tenant))
                for prompt, scores, tenant in prompts]
    finally:
        await engine.close()


@dataclass(frozen=True)
class Verdict:
    """What a policy decided about a prompt, in the terms a case's `expect` uses."""

    outcome: Literal["forward", "block"]
    rule: str
    requires: list[str]
    found: list[str]  # every entity type found


def verdict(analysis: Analysis) -> Verdict:
    decision = analysis.protection.decision
    return Verdict(decision.outcome, decision.rule, list(decision.requires),
                   sorted(analysis.protection.found))


def differences(analysis: Analysis, case: Case) -> list[str]:
    """The fields of the case's expectation the decision does not meet (none: it passes).
    `rule` and `requires` are checked only when the case names them; `found` must be among
    what was found."""
    got = verdict(analysis)
    expect = case.expect
    return [name for name, differs in (
        ("outcome", got.outcome != expect.outcome),
        ("rule", expect.rule is not None and got.rule != expect.rule),
        ("requires", expect.requires is not None and got.requires != expect.requires),
        ("found", not set(expect.found) <= set(got.found)),
    ) if differs]


async def run_cases(loaded: LoadedPolicy, cases: Sequence[Case], ner_workers: int = 1
                    ) -> list[Analysis]:
    """Each case's prompt, with its scores and tenant, as `veil policy test` runs it."""
    return await analyze(loaded, [(c.prompt, c.scores, c.tenant) for c in cases], ner_workers)


async def protected(inspector: Inspector, compiled: CompiledPolicy, texts: Sequence[str],
                    reading: Reading, *, scores: Mapping[str, float], tenant: str,
                    attachments: Mapping[str, int] | None = None) -> Protection:
    """Detection, then the protect stage, as the pipeline runs them on `texts` (read by the
    detectors as `reading`); the scores are given, as the scorer would answer."""
    detections = await inspector.detect(reading, compiled)
    return protect(texts, compiled, detections, Scores(dict(scores)), tenant=tenant,
                   attachments=attachments)


async def analyze_request(inspector: Inspector, compiled: CompiledPolicy,
                          request: ApiRequest, scores: Mapping[str, float], tenant: str
                          ) -> Protection:
    """A whole API request as the pipeline takes it: attachments and unknown fields admitted
    (or refused, `InvalidRequest`) as the policy says, every text the walk found scanned
    (values in free-form JSON read after their key)."""
    scan = request.scan
    attachments = admit(scan.attachments, scan.unknown, compiled.policy)
    texts = scan.texts if compiled.scans else []
    return await protected(inspector, compiled, texts, Reading(*scan.for_detection(texts)),
                           scores=scores, tenant=tenant, attachments=attachments)


def check(analysis: Analysis, case: Case) -> tuple[bool, str]:
    """(passed, what happened) for one case."""
    decision = analysis.protection.decision
    found = set(analysis.protection.found)
    ok = not differences(analysis, case)
    got = f"{decision.outcome} {decision.rule}"
    if decision.requires:
        got += f" requires {','.join(decision.requires)}"
    missing = sorted(set(case.expect.found) - found)
    if missing:
        got += f" (not found: {','.join(missing)})"
    return ok, got
