"""The Cases view's API against a real studio server: what it runs and adds, and everything it
must refuse (other files, duplicates, huge or mistyped bodies) without writing a byte."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from gateway.errors import DetectorFailed
from gateway.policy.cases import load_cases
from gateway.studio import cases_view
from tests.browser.harness import StudioServer, studio_server

POLICY = """\
version: 1
name: cases-api
detectors:
  builtin: [patterns]
actions:
  CREDIT_CARD: block
"""
CASES = """\
# keep this comment
cases:
  - name: cards are blocked
    prompt: "card 4111 1111 1111 1111"
    expect: {outcome: block, rule: actions.CREDIT_CARD=block, found: [CREDIT_CARD]}
  - name: cards pass   # wrong on purpose
    prompt: "card 4111 1111 1111 1111"
    expect: {outcome: forward, rule: default}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two policies, `cards` with a cases file and `empty` without one."""
    for name in ("cards", "empty"):
        (tmp_path / f"{name}.yaml").write_text(POLICY)
    (tmp_path / "cards.cases.yaml").write_text(CASES)
    (tmp_path / "config.yaml").write_text(
        "backends:\n  - name: demo\n    url: http://127.0.0.1:9\nmodels:\n  demo-model: [demo]\n"
        "policies:\n  files: [cards.yaml, empty.yaml]\n")
    return tmp_path


@pytest.fixture
def studio(folder: Path) -> Iterator[StudioServer]:
    with studio_server(folder / "config.yaml") as server:
        yield server


def policy(studio: StudioServer, name: str) -> str:
    """The policy's path exactly as the config lists it (what the page sends back)."""
    return next(str(p) for p in studio.studio.policy_files if p.stem == name)


def post(studio: StudioServer, path: str, body: Any) -> httpx.Response:
    return httpx.post(studio.url() + f"/api/cases/{path}", content=json.dumps(body).encode(),
                      headers={"Content-Type": "application/json"}, timeout=60)


def refused(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == error["type"] == code
    return str(error["message"])


def test_files_lists_each_policy_with_its_cases_file(studio: StudioServer, folder: Path) -> None:
    listed = httpx.get(studio.url() + "/api/cases/files").json()["files"]
    assert listed == [
        {"policy": policy(studio, "cards"), "cases_file": str(folder / "cards.cases.yaml"),
         "exists": True, "count": 2, "error": None},
        {"policy": policy(studio, "empty"), "cases_file": str(folder / "empty.cases.yaml"),
         "exists": False, "count": 0, "error": None}]


def test_run_gives_each_case_expected_got_and_the_diff(studio: StudioServer) -> None:
    result = post(studio, "run", {"policy": policy(studio, "cards")}).json()
    assert (result["passed"], result["failed"]) == (1, 1)
    good, bad = result["cases"]
    assert good["passed"]
    assert good["diff"] == []
    assert not bad["passed"]
    assert bad["expected"] == {"outcome": "forward", "rule": "default", "requires": None,
                               "found": []}
    assert bad["got"] == {"outcome": "block", "rule": "actions.CREDIT_CARD=block",
                          "requires": [], "found": ["CREDIT_CARD"]}
    assert bad["diff"] == [
        {"field": "outcome", "expected": "forward", "got": "block"},
        {"field": "rule", "expected": "default", "got": "actions.CREDIT_CARD=block"}]


def test_a_policy_without_cases_says_so(studio: StudioServer) -> None:
    message = refused(post(studio, "run", {"policy": policy(studio, "empty")}), 404,
                      "no_cases_file")
    assert "add the first one" in message


def test_a_broken_cases_file_is_reported_at_its_line_and_column(studio: StudioServer,
                                                                folder: Path) -> None:
    (folder / "cards.cases.yaml").write_text(
        "cases:\n  - name: x\n    prompt: y\n    expect: {outcome: maybe}\n")
    response = post(studio, "run", {"policy": policy(studio, "cards")})
    message = refused(response, 422, "invalid_cases_file")
    assert "cards.cases.yaml:4:23: cases[0].expect.outcome" in message
    [issue] = response.json()["error"]["issues"]
    assert (issue["file"], issue["line"], issue["column"], issue["key"]) == (
        str(folder / "cards.cases.yaml"), 4, 23, "cases[0].expect.outcome")
    unparsable = folder / "cards.cases.yaml"
    unparsable.write_text("cases:\n  - name: [x\n")
    issue = post(studio, "run", {"policy": policy(studio, "cards")}).json()["error"]["issues"][0]
    assert issue["line"] is not None
    assert "invalid YAML" in issue["message"]


def test_only_the_configs_own_policies_can_be_named(studio: StudioServer, folder: Path) -> None:
    cards = policy(studio, "cards")
    before = sorted(p.name for p in folder.iterdir())
    for named in ("../../etc/passwd", "/etc/passwd", str(folder / "cards.cases.yaml"),
                  str(folder / "sub" / ".." / "cards.yaml"), "cards.yaml", cards + "\x00",
                  str(folder / "config.yaml")):
        refused(post(studio, "run", {"policy": named}), 404, "unknown_policy")
        refused(post(studio, "add", {"policy": named, "name": "n", "prompt": "p"}), 404,
                "unknown_policy")
    assert sorted(p.name for p in folder.iterdir()) == before


def test_duplicate_names_are_refused(studio: StudioServer, folder: Path) -> None:
    before = (folder / "cards.cases.yaml").read_bytes()
    for name in ("cards are blocked", "  cards are blocked  "):
        refused(post(studio, "add", {"policy": policy(studio, "cards"), "name": name,
                                     "prompt": "anything"}), 409, "duplicate_case")
    assert (folder / "cards.cases.yaml").read_bytes() == before


def test_huge_bodies_and_over_long_fields_are_refused(studio: StudioServer,
                                                      folder: Path) -> None:
    cards = policy(studio, "cards")
    before = (folder / "cards.cases.yaml").read_bytes()
    refused(post(studio, "add", {"policy": cards, "name": "n", "prompt": "x" * 300_000}), 413,
            "request_too_large")
    refused(httpx.post(studio.url() + "/api/cases/add", content=b"{" * 5_000_000,
                       headers={"Content-Type": "application/json"}), 413, "request_too_large")
    refused(post(studio, "add", {"policy": cards, "name": "n" * 201, "prompt": "p"}), 413,
            "too_long")
    refused(post(studio, "add", {"policy": cards, "name": "n", "prompt": "p" * 32_001}), 413,
            "too_long")
    assert (folder / "cards.cases.yaml").read_bytes() == before


@pytest.mark.parametrize("body", [
    [], "cards", None, {},
    {"policy": ["cards.yaml"], "name": "n", "prompt": "p"},
    {"name": "n", "prompt": "p"},
    {"policy": "P", "name": 7, "prompt": "p"},
    {"policy": "P", "name": "n", "prompt": ["p"]},
    {"policy": "P", "name": "n", "prompt": "   "},
    {"policy": "P", "name": "two\nlines", "prompt": "p"},
    {"policy": "P", "name": "n", "prompt": "p", "expect": "block"},
    {"policy": "P", "name": "n", "prompt": "p", "expect": {"outcome": "maybe"}},
    {"policy": "P", "name": "n", "prompt": "p", "expect": {"outcome": "block", "why": 1}},
    {"policy": "P", "name": "n", "prompt": "p", "expect": {"outcome": "block", "rule": 3}},
    {"policy": "P", "name": "n", "prompt": "p", "tenant": "acme"},
])
def test_wrong_types_and_keys_are_refused(studio: StudioServer, folder: Path,
                                          body: Any) -> None:
    if isinstance(body, dict) and body.get("policy") == "P":
        body = {**body, "policy": policy(studio, "cards")}
    before = (folder / "cards.cases.yaml").read_bytes()
    response = post(studio, "add", body)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["code"] in ("invalid_request", "invalid_expectation",
                                                "unknown_policy")
    assert (folder / "cards.cases.yaml").read_bytes() == before


def test_not_json_is_refused(studio: StudioServer) -> None:
    response = httpx.post(studio.url() + "/api/cases/run", content=b"{not json",
                          headers={"Content-Type": "application/json"})
    refused(response, 400, "invalid_json")


def test_adding_without_an_expectation_records_todays_decision(studio: StudioServer,
                                                               folder: Path) -> None:
    answer = post(studio, "add", {"policy": policy(studio, "empty"), "name": "first",
                                  "prompt": "pay 4111 1111 1111 1111"}).json()
    assert answer["recorded"] is True
    assert answer["count"] == 1
    [case] = load_cases(folder / "empty.cases.yaml")
    assert (case.name, case.prompt) == ("first", "pay 4111 1111 1111 1111")
    assert case.expect.model_dump() == {"outcome": "block", "rule": "actions.CREDIT_CARD=block",
                                        "requires": None, "found": ["CREDIT_CARD"]}
    preview = post(studio, "expectation", {"policy": policy(studio, "empty"),
                                           "prompt": "pay 4111 1111 1111 1111"}).json()
    assert preview["expect"] == case.expect.model_dump()


def test_adding_appends_keeping_the_file_as_it_was(studio: StudioServer, folder: Path) -> None:
    expect = {"outcome": "forward", "rule": "default"}
    answer = post(studio, "add", {"policy": policy(studio, "cards"), "name": "a: [tricky] #name",
                                  "prompt": "line one\n  - name: injected\nline three",
                                  "expect": expect}).json()
    assert answer["recorded"] is False
    assert answer["count"] == 3
    text = (folder / "cards.cases.yaml").read_text()
    assert text.startswith(CASES)
    cases = load_cases(folder / "cards.cases.yaml")
    assert [c.name for c in cases] == ["cards are blocked", "cards pass", "a: [tricky] #name"]
    assert cases[-1].prompt == "line one\n  - name: injected\nline three"
    assert not list(folder.glob(".*.tmp"))  # the temporary file was renamed, not left behind


def test_a_file_it_cannot_append_to_is_left_alone(studio: StudioServer, folder: Path) -> None:
    flow = "cases: [{name: a, prompt: b, expect: {outcome: forward}}]\n"
    (folder / "cards.cases.yaml").write_text(flow)
    message = refused(post(studio, "add", {"policy": policy(studio, "cards"), "name": "n",
                                           "prompt": "p", "expect": {"outcome": "forward"}}),
                      409, "cannot_append")
    assert "add it by hand" in message
    assert (folder / "cards.cases.yaml").read_text() == flow


def test_a_detector_failure_answers_as_the_gateway_would(studio: StudioServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    async def failing(*_args: object) -> None:
        raise DetectorFailed("ner", "the workers stopped")

    monkeypatch.setattr(cases_view, "run_cases", failing)
    response = post(studio, "run", {"policy": policy(studio, "cards")})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "detector_failed"
