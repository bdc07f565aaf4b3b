"""Values split between consecutive texts are found on both sides; values a text holds whole
are not stretched across the join."""

from __future__ import annotations

import asyncio

from gateway.privacy.engine import DetectionEngine, Selection

PATTERNS = Selection(frozenset({"patterns"}))


def detect(texts: list[str]) -> list[list[tuple[str, str]]]:
    async def run() -> list[list[tuple[str, str]]]:
        engine = DetectionEngine(1)
        try:
            found = await engine.detect(texts, PATTERNS)
        finally:
            await engine.close()
        return [[(t[s.start:s.end], s.entity) for s in spans]
                for t, spans in zip(texts, found.spans, strict=True)]
    return asyncio.run(run())


def test_email_split_across_two_texts_is_found_on_both_sides() -> None:
    assert detect(["write to john.doe", "@example.com please"]) == [
        [("john.doe", "EMAIL")], [("@example.com", "EMAIL")]]


def test_key_split_with_an_evasion_across_texts() -> None:
    key = "sk-proj-a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    found = detect([f"key {key[:20]}", f"\u200b{key[20:]} end"])
    assert found[0] == [(key[:20], "SECRET")]
    assert found[1] == [(f"\u200b{key[20:]}", "SECRET")]


def test_a_value_whole_in_one_text_is_not_stretched_into_the_next() -> None:
    assert detect(["I wrote to ann@example.org.", "Also cc bob"]) == [
        [("ann@example.org", "EMAIL")], []]
