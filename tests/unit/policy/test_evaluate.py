from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy.evaluate import Facts, applies, evaluate
from gateway.policy.loader import load_policy

POLICIES = Path(__file__).parents[3] / "policies"


def decide(policy: str, **entities: int) -> tuple[str, str, tuple[str, ...]]:
    loaded = load_policy(POLICIES / f"{policy}.yaml")
    decision = evaluate(loaded, Facts("t", "chat_completions", "m", entities))
    assert decision.policy == loaded.digest
    return decision.outcome, decision.rule, decision.requires


@pytest.mark.parametrize(("policy", "entities", "expected"), [
    ("default", {}, ("forward", "default", ())),
    ("default", {"PERSON": 2, "EMAIL": 1}, ("forward", "default", ())),
    ("default", {"SECRET": 1}, ("forward", "default", ())),  # redacted, not blocked
    ("healthcare", {"PERSON": 1}, ("forward", "routing.phi", ("confidential-gpu",))),
    ("healthcare", {"MRN_PROJECT": 1, "PERSON": 1}, ("block", "actions.MRN_PROJECT=block", ())),
    ("healthcare", {"SECRET": 1}, ("block", "routing.secret.block", ())),
    ("finance", {"CREDIT_CARD": 1}, ("block", "actions.CREDIT_CARD=block", ())),
    ("finance", {"IBAN": 1}, ("forward", "routing.pci", ("confidential-cpu",))),
    ("engineering", {"SECRET": 1, "EMAIL": 1}, ("block", "actions.SECRET=block", ())),
    ("engineering", {"IP_ADDRESS": 3}, ("forward", "default", ())),
])
def test_example_policy_decisions(policy: str, entities: dict[str, int],
                                  expected: tuple[str, str, tuple[str, ...]]) -> None:
    assert decide(policy, **entities) == expected


def test_zero_counts_are_not_findings() -> None:
    assert decide("finance", CREDIT_CARD=0)[0] == "forward"


def test_applies_to() -> None:
    policy = load_policy(POLICIES / "default.yaml").policy
    assert applies(policy, "any", "messages", "any-model")
    narrowed = policy.model_copy(update={"applies_to": policy.applies_to.model_copy(
        update={"tenants": ["clinic"]})})
    assert applies(narrowed, "clinic", "messages", "m")
    assert not applies(narrowed, "bank", "messages", "m")
