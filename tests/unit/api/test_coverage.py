"""The README's field-coverage table is the declared structures' own account of themselves."""

from __future__ import annotations

from pathlib import Path

from gateway.api import coverage, openai

README = Path(__file__).parents[3] / "README.md"


def test_readme_table_matches_the_structures() -> None:
    text = README.read_text()
    start = text.index("<!-- field-coverage:start -->\n") + len("<!-- field-coverage:start -->\n")
    end = text.index("<!-- field-coverage:end -->")
    assert text[start:end] == coverage.markdown(), \
        "regenerate the README table: python -m gateway.api.coverage"


def test_table_lists_what_is_not_scanned() -> None:
    chat = coverage.columns(openai.CHAT)
    assert "messages[].tool_call_id" in chat["identifiers"]
    assert "messages[].content[].image_url" in chat["attachments"]
    assert "messages[].content" not in {p for paths in chat.values() for p in paths}
    assert "conversation" in coverage.columns(openai.RESPONSES)["identifiers"]
    assert "items[].image_url" not in coverage.columns(openai.CONVERSATIONS)["attachments"]
    assert "items[].content[].image_url" in coverage.columns(openai.CONVERSATIONS)["attachments"]
