"""What is corrected in the NER model's findings before they count: lines, titles, capital-less
prose, and single capitalised words in texts of another language."""

from __future__ import annotations

import pytest

from gateway.privacy.presidio import _tidied, not_english
from gateway.privacy.spans import Span

GERMAN = ("Sehr geehrte Frau Brandt, bitte senden Sie die Unterlagen für die Wohnung an "
          "mich, und ich werde sie mit dem Vertrag prüfen. Betreff ist die Kaution.")


def tidy(text: str, value: str, entity: str = "PERSON") -> str | None:
    start = text.index(value)
    span = _tidied(text, not_english(text), Span(start, start + len(value), entity, 0.8, "t"))
    return None if span is None else text[span.start:span.end]


def test_a_name_does_not_run_onto_the_next_line() -> None:
    assert tidy("Arjun Mehta\nMobile: 555", "Arjun Mehta\nMobile") == "Arjun Mehta"


def test_a_title_is_not_part_of_the_name() -> None:
    assert tidy("Dear Herr Demir, hello", "Herr Demir") == "Demir"


@pytest.mark.parametrize("value", ["de receptie van ons"])
def test_capital_less_findings_are_dropped(value: str) -> None:
    assert tidy(f"toegangspas aanvragen bij {value} kantoor", value) is None


def test_particles_keep_a_name() -> None:
    assert tidy("met Sanne de Vries gesproken", "de Vries") == "de Vries"


def test_in_another_language_single_capitalised_words_are_nouns() -> None:
    assert not_english(GERMAN)
    assert tidy(GERMAN, "Wohnung") is None
    assert tidy(GERMAN, "Betreff", "ORGANIZATION") is None
    assert tidy(GERMAN, "Frau Brandt") == "Brandt"  # a title and a name: kept, title off


def test_english_text_keeps_single_word_names() -> None:
    text = "Please ask Thaddeus to send the contract to our office by Friday."
    assert not not_english(text)
    assert tidy(text, "Thaddeus") == "Thaddeus"
