from __future__ import annotations

import re

import pytest

from gateway.errors import ServiceUnavailable
from gateway.privacy.engine import BATCH_CHARS, DetectionEngine, Selection, SpanCache, batched
from gateway.privacy.spans import Span

PATTERNS = Selection(frozenset({"patterns"}))
WITH_NER = Selection(frozenset({"patterns", "presidio"}))


async def test_ner_not_running_fails_closed() -> None:
    engine = DetectionEngine()  # never prepared: no worker pool
    with pytest.raises(ServiceUnavailable) as info:
        await engine.detect(["Jane Doe lives in Paris"], WITH_NER)
    assert info.value.code == "detector_failed"
    assert "Jane" not in info.value.message


async def test_patterns_only_needs_no_pool() -> None:
    engine = DetectionEngine()
    await engine.prepare([PATTERNS])
    assert engine.ready
    spans = await engine.detect(["mail a@b.example", ""], PATTERNS)
    assert [s.entity for s in spans[0]] == ["EMAIL"]
    assert spans[1] == []


async def test_cache_pays_only_for_new_texts() -> None:
    engine = DetectionEngine()
    turn1 = ["mail a@b.example", "hello"]
    first = await engine.detect(turn1, PATTERNS)
    assert (engine.cache.hits, engine.cache.misses) == (0, 2)
    second = await engine.detect([*turn1, "and c@d.example"], PATTERNS)
    assert (engine.cache.hits, engine.cache.misses) == (2, 3)
    assert second[:2] == first
    assert [s.entity for s in second[2]] == ["EMAIL"]


async def test_cache_entries_are_per_detector_selection() -> None:
    """A policy without patterns must not be served spans another policy's patterns found."""
    engine = DetectionEngine()
    assert [s.entity for s in (await engine.detect(["a@b.example"], PATTERNS))[0]] == ["EMAIL"]
    nothing = Selection(frozenset())
    assert await engine.detect(["a@b.example"], nothing) == [[]]


def test_cache_is_bounded_and_keyed_by_hmac() -> None:
    cache = SpanCache(capacity=2)
    for text in ("a", "b", "c"):
        cache.put(cache.key(text), [])
    assert cache.get(cache.key("a")) is None  # evicted, least recently used
    assert cache.get(cache.key("c")) == []
    assert cache.key("a") != SpanCache().key("a")  # a per-process secret key


async def test_close_stops_ner_workers_promptly() -> None:
    import time  # noqa: PLC0415

    engine = DetectionEngine()
    await engine.prepare([WITH_NER])
    assert engine.ready
    spans = await engine.detect(["Angela Merkel visited Paris."], WITH_NER)
    assert {s.entity for s in spans[0]} >= {"PERSON", "LOCATION"}
    started = time.monotonic()
    await engine.close()
    assert time.monotonic() - started < 2


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


async def test_close_stops_workers_still_loading_the_model() -> None:
    """Shutdown must not wait for a worker loading spaCy, nor leave it behind."""
    import asyncio  # noqa: PLC0415
    import multiprocessing  # noqa: PLC0415

    before = {p.pid for p in multiprocessing.active_children()}
    engine = DetectionEngine(ner_workers=2)
    starting = asyncio.create_task(engine.prepare([WITH_NER]))
    for _ in range(100):
        if {p.pid for p in multiprocessing.active_children()} - before:
            break
        await asyncio.sleep(0.05)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    await engine.close()
    for _ in range(100):
        left = {p.pid for p in multiprocessing.active_children()} - before
        if not left:
            break
        await asyncio.sleep(0.05)
    assert not left
    assert not engine.ready
