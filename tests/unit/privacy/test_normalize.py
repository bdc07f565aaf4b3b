"""The reading form: evasions undone for the detectors, spans mapped back onto exactly the
characters the client sent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.privacy.normalize import reading
from gateway.privacy.spans import Span
from tests.unit.privacy.findings import found


@pytest.mark.parametrize("written", [
    "john\u200b.doe@example.com",  # zero-width space
    "john.d\u00adoe@exa\u00admple.com",  # soft hyphens
    "john.doe\u2060@example.com",  # word joiner
    "\uff4a\uff4f\uff48\uff4e\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f"
    "\uff4d",  # full-width
    "john.doe%40example.com",  # percent-encoded
    "john.doe&#64;example.com",  # character reference
    "john.doe&#x40;example&#46;com",
])
def test_evasions_of_an_email_are_found_and_cover_what_was_written(written: str) -> None:
    assert found(f"write to {written} today") == [(written, "EMAIL")]


@pytest.mark.parametrize("written", [
    "4111\u200b1111\u200b1111\u200b1111", "\uff14\uff11\uff11\uff11 1111 1111 1111",
    "4111\u20071111\u20071111\u20071111", "4111\u00ad1111\u00ad1111\u00ad1111",
])
def test_evasions_of_a_card_are_found(written: str) -> None:
    assert found(f"card {written} thanks") == [(written, "CREDIT_CARD")]


def test_a_key_with_a_zero_width_space_is_found() -> None:
    key = "sk-proj-" + "a1B2c3D4e5F6g7H8" + "\u200b" + "i9J0k1L2m3N4o5P6"
    assert found(f"key={key}") == [(key, "SECRET")]


def test_plain_ascii_is_its_own_reading() -> None:
    read = reading("nothing to rewrite here, 100% sure")
    assert read.text == "nothing to rewrite here, 100% sure"
    assert not read.edits


@given(st.lists(st.sampled_from(
    ["a", "b", "@", ".", " ", "\u200b", "\u00ad", "\uff21", "\u00a0", "%4", "0", "&#64;",
     "\ufb01", "\u3000", "é"]), max_size=40).map("".join), st.data())
def test_spans_map_back_inside_the_original_and_in_order(text: str, data: st.DataObject) -> None:
    read = reading(text)
    if not read.text:
        return
    start = data.draw(st.integers(0, len(read.text) - 1))
    end = data.draw(st.integers(start + 1, len(read.text)))
    span = read.original(Span(start, end, "X", 1.0, "t"))
    assert 0 <= span.start < span.end <= len(text)
    # what the reading shows for the span comes from inside the original span
    assert reading(text[span.start:span.end]).text.find(read.text[start:end].strip()) != -1 \
        or not read.text[start:end].strip()
