"""Appending a case to a cases file as text: the user's bytes stay, the new item loads as the
last case, and a file the append cannot extend cleanly is left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import CasesFileRefused, ConfigError
from gateway.policy.cases import Case, load_cases
from gateway.studio.cases_file import append_case, cases_file_for, read_cases


def case(name: str = "new", prompt: str = "card 4111 1111 1111 1111", **expect: object) -> Case:
    return Case.model_validate({"name": name, "prompt": prompt,
                                "expect": {"outcome": "block", **expect}})


def test_the_cases_file_sits_beside_its_policy() -> None:
    assert cases_file_for(Path("policies/finance.yaml")) == Path("policies/finance.cases.yaml")
    assert cases_file_for(Path("/p/a.yml")) == Path("/p/a.cases.yaml")


@pytest.mark.parametrize("text", [
    "# header\ncases:\n  - name: old   # why\n    prompt: p\n    expect: {outcome: forward}\n"
    "# a closing comment\n",
    "cases:\n- name: old\n  prompt: p\n  expect: {outcome: forward}\n",  # items at column 1
    "cases:\n    -   name: old\n        prompt: p\n        expect:\n          outcome: forward",
])
def test_a_case_is_appended_and_every_byte_before_it_kept(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.cases.yaml"
    path.write_text(text)
    new = case(rule="actions.CREDIT_CARD=block", found=["CREDIT_CARD"], requires=["tee"])
    append_case(path, new)
    assert path.read_text().startswith(text)
    assert [c.name for c in load_cases(path)] == ["old", "new"]
    assert load_cases(path)[-1] == new


def test_values_cannot_break_out_of_their_item(tmp_path: Path) -> None:
    path = tmp_path / "x.cases.yaml"
    tricky = case(name='x: "y" # not a comment', prompt="a\n  - name: injected\n\t'b' ✓ \x07")
    append_case(path, tricky)
    assert load_cases(path) == [tricky]
    assert path.read_text().count("\n") == 4  # cases:, name, prompt, expect: one line each


def test_an_absent_or_comment_only_file_gets_its_first_case(tmp_path: Path) -> None:
    absent, comments = tmp_path / "a.cases.yaml", tmp_path / "b.cases.yaml"
    comments.write_text("# cases for b, to come")
    assert read_cases(absent) == read_cases(comments) == []
    for path in (absent, comments):
        append_case(path, case())
        assert load_cases(path) == [case()]
    assert comments.read_text().startswith("# cases for b, to come\ncases:\n")


def test_a_file_the_append_cannot_extend_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "x.cases.yaml"
    for text in ("cases: [{name: a, prompt: b, expect: {outcome: forward}}]\n",
                 "cases:\n  - name: a\n    prompt: b\n    expect: {outcome: forward}\n...\n"):
        path.write_text(text)
        with pytest.raises(CasesFileRefused):
            append_case(path, case())
        assert path.read_text() == text
    path.write_text("cases:\n  - name: a\n")  # already invalid: its own error, at its line
    with pytest.raises(ConfigError, match=r"x.cases.yaml:2:5: cases\[0\].prompt: Field required"):
        append_case(path, case())
    assert path.read_text() == "cases:\n  - name: a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.cases.yaml"]  # no temporary left


def test_a_link_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.yaml"
    target.write_text("cases:\n  - name: a\n    prompt: b\n    expect: {outcome: forward}\n")
    link = tmp_path / "x.cases.yaml"
    link.symlink_to(target)
    with pytest.raises(CasesFileRefused, match="symbolic link"):
        append_case(link, case())
    assert link.is_symlink()


def test_the_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "x.cases.yaml"
    path.write_text("cases:\n  - name: a\n    prompt: b\n    expect: {outcome: forward}\n")
    path.chmod(0o600)
    append_case(path, case())
    assert path.stat().st_mode & 0o777 == 0o600
