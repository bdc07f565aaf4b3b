"""The policy cases file (`*.cases.yaml`): prompts with the decision a policy must reach, like
OPA's tests. `veil policy test` runs them through the same stages the gateway does
(`gateway/explain.py`); this module only defines and reads the format.

    cases:
      - name: card numbers never leave
        prompt: "Refund card 4111 1111 1111 1111"
        scores: {vendor/topics/m-and-a: 0.8}     # optional: decrypted semantic scores
        expect: {outcome: block, rule: actions.CREDIT_CARD=block, found: [CREDIT_CARD]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.yamlsource import load_yaml, validate

ScoreKey = Annotated[str, Field(pattern=r"^[^/\s]+/[^/\s]+/[^/\s]+$")]  # scorer/model/label


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
    # What the scorer would answer for the prompt, as the gateway decrypts it: lets a case
    # exercise `semantic` rules without a scorer.
    scores: dict[ScoreKey, Annotated[float, Field(ge=-1, le=1)]] = Field(default_factory=dict)
    expect: Expectation


class CasesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cases: list[Case] = Field(min_length=1)


def load_cases(path: str | Path) -> list[Case]:
    return validate(load_yaml(path), CasesFile).cases
