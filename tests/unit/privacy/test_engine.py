from __future__ import annotations

import pytest

from gateway.errors import ServiceUnavailable
from gateway.privacy.engine import DetectionEngine, Selection, SpanCache

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
    spans = (await engine.detect(["mail a@b.example", ""], PATTERNS)).spans
    assert [s.entity for s in spans[0]] == ["EMAIL"]
    assert spans[1] == []


async def test_cache_pays_only_for_new_texts() -> None:
    engine = DetectionEngine()
    turn1 = ["mail a@b.example", "hello"]
    first = (await engine.detect(turn1, PATTERNS)).spans
    assert (engine.cache.hits, engine.cache.misses) == (0, 2)
    second = (await engine.detect([*turn1, "and c@d.example"], PATTERNS)).spans
    assert (engine.cache.hits, engine.cache.misses) == (2, 3)
    assert second[:2] == first
    assert [s.entity for s in second[2]] == ["EMAIL"]


async def test_cache_entries_are_per_detector_selection() -> None:
    """A policy without patterns must not be served spans another policy's patterns found."""
    engine = DetectionEngine()
    found = await engine.detect(["a@b.example"], PATTERNS)
    assert [s.entity for s in found.spans[0]] == ["EMAIL"]
    nothing = Selection(frozenset())
    assert (await engine.detect(["a@b.example"], nothing)).spans == [[]]


def test_cache_is_bounded_and_keyed_by_hmac() -> None:
    cache = SpanCache(capacity=2)
    for text in ("a", "b", "c"):
        cache.put(cache.key(text), [])
    assert cache.get(cache.key("a")) is None  # evicted, least recently used
    assert cache.get(cache.key("c")) == []
    assert cache.key("a") != SpanCache().key("a")  # a per-process secret key
