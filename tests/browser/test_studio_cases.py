"""The Cases view in a real browser: run a policy's cases file and see each case pass or fail
with the fields that differ; add the playground's prompt as a new case and find it in the file,
the file's comments kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from gateway.policy.cases import load_cases
from tests.browser.harness import studio_server, wait_for, wait_for_text

CASES = """\
# Reviewed by the payments team: keep this header.
cases:
  - name: card numbers never leave   # the PCI rule
    prompt: "Refund card 4111 1111 1111 1111 now."
    expect: {outcome: block, rule: actions.CREDIT_CARD=block, found: [CREDIT_CARD]}
  # deliberately wrong: the policy blocks cards
  - name: "<img src=x onerror=alert(1)> cards may pass"
    prompt: "Pay with 4111 1111 1111 1111"
    expect: {outcome: forward}
"""


POLICY = """\
version: 1
name: cases-test
detectors:
  builtin: [patterns]
actions:
  CREDIT_CARD: block
  EMAIL: pseudonymize
"""


@pytest.fixture
def studio_config(tmp_path: Path) -> Path:
    """A config with one patterns-only policy (no NER: each run takes milliseconds)."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    config = tmp_path / "config.yaml"
    config.write_text("backends:\n  - name: demo\n    url: http://127.0.0.1:9\n"
                      "models:\n  demo-model: [demo]\npolicies:\n  files: [policy.yaml]\n")
    return config


@pytest.fixture
def cases_file(studio_config: Path) -> Path:
    """The policy's cases file beside it, as `NAME.cases.yaml`."""
    path = studio_config.parent / "policy.cases.yaml"
    path.write_text(CASES)
    return path


def test_run_the_cases_and_see_pass_fail_with_the_diff(fresh_browser: WebDriver,
                                                       studio_config: Path,
                                                       cases_file: Path) -> None:
    with studio_server(studio_config) as studio:
        fresh_browser.get(studio.url() + "/#cases")
        wait_for_text(fresh_browser, "#cases-policy option", "2 cases")
        wait_for(fresh_browser, "#run-cases").click()
        wait_for_text(fresh_browser, "#cases-summary", "1 passed, 1 failed")
        passed = wait_for(fresh_browser, "tr.case.pass")
        assert "card numbers never leave" in passed.text
        assert "PASS" in passed.text
        failed = wait_for(fresh_browser, "tr.case.fail")
        assert "FAIL" in failed.text
        assert "<img src=x onerror=alert(1)> cards may pass" in failed.text  # shown as text
        assert not fresh_browser.find_elements("css selector", "#cases-table img")

        def cell(row: str, column: str, field: str) -> str:
            found = fresh_browser.find_element(
                "css selector", f"{row} td.{column} dd[data-field={field}]")
            return f"{found.text} {'differs' if 'differs' in found.get_attribute('class') else ''}"

        assert cell("tr.case.fail", "expected", "outcome") == "forward differs"
        assert cell("tr.case.fail", "got", "outcome") == "block differs"
        assert cell("tr.case.fail", "expected", "rule") == "any "  # not named: not compared
        assert cell("tr.case.fail", "got", "rule") == "actions.CREDIT_CARD=block "
        assert cell("tr.case.pass", "got", "found") == "CREDIT_CARD "


def test_a_broken_cases_file_shows_where(fresh_browser: WebDriver, studio_config: Path,
                                         cases_file: Path) -> None:
    cases_file.write_text("cases:\n  - name: x\n    prompt: y\n    expect: {outcome: maybe}\n")
    with studio_server(studio_config) as studio:
        fresh_browser.get(studio.url() + "/#cases")
        wait_for_text(fresh_browser, "#cases-policy option", "cases file broken")
        wait_for(fresh_browser, "#run-cases").click()
        error = wait_for_text(fresh_browser, "#cases-error", "policy.cases.yaml:4:23")
        assert "cases[0].expect.outcome" in error.text


def test_add_the_playground_prompt_as_a_case(fresh_browser: WebDriver, studio_config: Path,
                                             cases_file: Path) -> None:
    """The Playground (another workstream) keeps its prompt in `veil.shared.playground`; until
    it is merged this test puts the prompt there itself, as the Playground does. Once it is
    merged, drive it through the Playground instead: type the prompt there, open #cases.
    Here the case's expectation is recorded from what the policy decides now, shown first."""
    prompt = 'Card 4111 1111 1111 1111, "quoted"\n  - name: not a case\n<b>bold</b>'
    with studio_server(studio_config) as studio:
        policy = str(studio.studio.policy_files[0])
        fresh_browser.get(studio.url() + "/#cases")
        wait_for_text(fresh_browser, "#case-source", "type a prompt in the Playground first")
        assert not fresh_browser.find_element("css selector", "#add-case").is_enabled()
        fresh_browser.execute_script(
            "veil.shared.playground = {policy: arguments[0], prompt: arguments[1]};"
            "location.hash = '#playground';", policy, prompt)
        fresh_browser.execute_script("location.hash = '#cases';")
        shown = wait_for(fresh_browser, "#case-prompt")
        assert "Card 4111 1111 1111 1111" in shown.text
        assert "<b>bold</b>" in shown.text  # as text, not markup
        assert not fresh_browser.find_elements("css selector", "#case-prompt b")
        wait_for_text(fresh_browser, "#case-expect", "decides now")
        assert "block" in fresh_browser.find_element("css selector", "#case-expect").text
        fresh_browser.find_element("css selector", "#case-name").send_keys("pasted card")
        wait_for(fresh_browser, "#add-case").click()
        wait_for_text(fresh_browser, "#case-added", "(3 cases)")
        wait_for_text(fresh_browser, "#cases-summary", "2 passed, 1 failed")
        row = wait_for(fresh_browser, 'tr.case.pass[data-name="pasted card"]')
        assert "PASS" in row.text
    text = cases_file.read_text()
    assert text.startswith(CASES)  # the header, the comments and the layout are untouched
    last = load_cases(cases_file)[-1]
    assert (last.name, last.prompt) == ("pasted card", prompt)
    assert (last.expect.outcome, last.expect.rule, last.expect.found) == (
        "block", "actions.CREDIT_CARD=block", ["CREDIT_CARD"])
