"""Run a prompt through a policy the way the gateway would, offline: `veil policy explain`
prints the account, `veil policy test` checks a file of expected decisions (like OPA tests)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.plugins import load_detector
from gateway.policy.evaluate import Decision, Facts, evaluate
from gateway.policy.loader import LoadedPolicy
from gateway.privacy.masker import Masker
from gateway.privacy.patterns import PatternDetector
from gateway.privacy.spans import Detector, Span
from gateway.yamlsource import load_yaml, validate


@dataclass(frozen=True)
class Analysis:
    findings: list[tuple[Span, str]]  # span and the text it covers (the operator's own prompt)
    masked: str | None  # what would be sent, or None when the request is blocked
    decision: Decision


@cache
def _ner() -> Detector:
    from gateway.privacy.presidio import PresidioDetector  # noqa: PLC0415 (loads spaCy)

    return PresidioDetector()


def analyze(loaded: LoadedPolicy, prompt: str, *, tenant: str = "*",
            route: str = "chat_completions", model: str = "*") -> Analysis:
    chosen = loaded.policy.detectors
    detectors: list[Detector] = [PatternDetector()] if "patterns" in chosen.builtin else []
    if "presidio" in chosen.builtin:
        detectors.append(_ner())
    detectors += [load_detector(reference) for reference in chosen.plugins]
    masker = Masker(loaded.policy, hash_secret=b"explain-only-key")
    spans = [span for detector in detectors for span in detector.detect(prompt)]
    findings = masker.findings(prompt, spans)
    counts = Counter(span.entity for span in findings)
    decision = evaluate(loaded, Facts(tenant, route, model, counts))
    masked = None if decision.outcome == "block" else \
        masker.rewrite([prompt], [findings], tenant).texts[0]
    return Analysis([(s, prompt[s.start:s.end]) for s in findings], masked, decision)


class Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: Literal["forward", "block"]
    rule: str | None = None
    requires: list[str] | None = None
    found: list[str] = Field(default_factory=list)  # entity types that must be detected


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    prompt: str
    tenant: str = "*"
    route: str = "chat_completions"
    model: str = "*"
    expect: Expectation


class CasesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cases: list[Case] = Field(min_length=1)


def load_cases(path: str | Path) -> list[Case]:
    return validate(load_yaml(path), CasesFile).cases


def check(loaded: LoadedPolicy, case: Case) -> tuple[bool, str]:
    """(passed, what happened) for one case."""
    analysis = analyze(loaded, case.prompt, tenant=case.tenant, route=case.route,
                       model=case.model)
    decision = analysis.decision
    found = {span.entity for span, _ in analysis.findings}
    expect = case.expect
    ok = (decision.outcome == expect.outcome
          and (expect.rule is None or decision.rule == expect.rule)
          and (expect.requires is None or list(decision.requires) == expect.requires)
          and set(expect.found) <= found)
    got = f"{decision.outcome} {decision.rule}"
    if decision.requires:
        got += f" requires {','.join(decision.requires)}"
    missing = sorted(set(expect.found) - found)
    if missing:
        got += f" (not found: {','.join(missing)})"
    return ok, got
