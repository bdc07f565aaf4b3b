"""Texts into documents for a detector, and spans back: short texts joined, long ones chunked
with overlap, every span back to its own text once."""

from __future__ import annotations

import re

from gateway.privacy.batching import BATCH_CHARS, CHUNK_OVERLAP, batched
from gateway.privacy.spans import Span


class Capitalised:
    """A stand-in NER: every run of capitalised words is a PERSON; records what it was given."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, text: str) -> list[Span]:
        self.calls.append(text)
        return [Span(m.start(), m.end(), "PERSON", 0.9, "fake")
                for m in re.finditer(r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*", text)]


def test_short_texts_are_detected_together_and_mapped_back() -> None:
    detect = Capitalised()
    texts = ["hello Ann", "", "plain", "Bob and Cy", "x" * BATCH_CHARS + " Dee"]
    found = batched(detect, texts)
    assert [[t[s.start:s.end] for s in spans] for t, spans in zip(texts, found, strict=True)] \
        == [["Ann"], [], [], ["Bob", "Cy"], ["Dee"]]
    assert len(detect.calls) == 2  # one batch of the short texts, the long one alone


def test_a_span_across_the_separator_is_cut_at_each_text() -> None:
    found = batched(lambda text: [Span(0, len(text), "PERSON", 0.9, "fake")], ["Ann", "Lee"])
    assert [(s.start, s.end) for spans in found for s in spans] == [(0, 3), (0, 3)]


def test_a_span_across_a_chunk_cut_is_found_once_and_whole() -> None:
    detect = Capitalised()
    chunk = 5_000
    before = "x " * (chunk // 2 - 3)  # the name straddles the first cut
    text = before + "Ann Lee " + "y " * 6_000 + "End Of Text"
    found = batched(detect, [text], chunk=chunk)[0]
    names = [text[s.start:s.end] for s in found]
    assert names == ["Ann Lee", "End Of Text"]
    assert len(detect.calls) >= 2
    assert all(len(call) <= chunk + 2 * CHUNK_OVERLAP for call in detect.calls)
