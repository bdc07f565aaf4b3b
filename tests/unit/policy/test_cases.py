from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.explain import check, differences, run_cases, verdict
from gateway.policy.cases import Case, load_cases
from gateway.policy.loader import load_policy

POLICIES = Path(__file__).parents[3] / "policies"


@pytest.mark.parametrize("name", ["default", "healthcare", "finance", "engineering"])
def test_example_policy_cases_pass(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["policy", "test", str(POLICIES / f"{name}.yaml"),
                 "--cases", str(POLICIES / f"{name}.cases.yaml")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert " 0 failed" in out


def test_a_wrong_expectation_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("cases:\n  - name: cards are fine\n    prompt: card 4111 1111 1111 1111\n"
                     "    expect: {outcome: forward}\n")
    assert main(["policy", "test", str(POLICIES / "finance.yaml"), "--cases", str(cases)]) == 1
    out = capsys.readouterr().out
    assert "FAIL    cards are fine" in out
    assert "block actions.CREDIT_CARD=block" in out
    assert "0 passed, 1 failed" in out


def test_malformed_cases_file_is_positioned(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("cases:\n  - name: x\n    prompt: y\n    expect: {outcome: maybe}\n")
    with pytest.raises(ConfigError, match=r"cases.yaml:4:23: cases\[0\].expect.outcome"):
        load_cases(cases)


def test_explain_prints_the_account(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", str(POLICIES / "finance.yaml"),
                 "--prompt", "Refund 4111 1111 1111 1111 to ann@example.org"]) == 0
    out = capsys.readouterr().out
    assert "found CREDIT_CARD" in out
    assert "outcome: block (rule: actions.CREDIT_CARD=block)" in out
    assert "sent upstream: nothing (blocked)" in out


async def test_differences_names_each_missed_field_as_check_judges(tmp_path: Path) -> None:
    policy = tmp_path / "cards.yaml"
    policy.write_text("version: 1\nname: cards\ndetectors:\n  builtin: [patterns]\n"
                      "actions:\n  CREDIT_CARD: block\n")
    prompt = "card 4111 1111 1111 1111"
    cases = [Case.model_validate({"name": str(i), "prompt": prompt, "expect": expect})
             for i, expect in enumerate([
                 {"outcome": "block", "rule": "actions.CREDIT_CARD=block",
                  "found": ["CREDIT_CARD"]},
                 {"outcome": "forward", "rule": "default", "requires": ["tee"],
                  "found": ["IBAN", "CREDIT_CARD"]},
                 {"outcome": "block"}])]
    analyses = await run_cases(load_policy(policy), cases)
    assert [differences(a, c) for a, c in zip(analyses, cases, strict=True)] == [
        [], ["outcome", "rule", "requires", "found"], []]
    assert [check(a, c)[0] for a, c in zip(analyses, cases, strict=True)] == [True, False, True]
    assert verdict(analyses[0]).found == ["CREDIT_CARD"]
