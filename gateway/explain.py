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

from gateway.inspection import Inspector, Reading
from gateway.policy.active import ActivePolicy
from gateway.policy.cases import Case
from gateway.policy.evaluate import Facts, evaluate
from gateway.policy.loader import LoadedPolicy
from gateway.privacy.engine import DetectionEngine
from gateway.protect import CompiledPolicy, Protection, Scores, compile_policy, protect

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
        out = []
        for prompt, scores, tenant in prompts:
            detections = await inspector.detect(Reading.plain([prompt]), compiled)
            out.append(Analysis(prompt, protect([prompt], compiled, detections,
                                                Scores(dict(scores)), tenant=tenant)))
        return out
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
