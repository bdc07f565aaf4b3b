from __future__ import annotations

import pytest

from gateway.errors import ServiceUnavailable
from gateway.privacy.engine import DetectionEngine, SpanCache


async def test_ner_not_running_fails_closed() -> None:
    engine = DetectionEngine(["patterns", "presidio"])  # never started: no worker pool
    with pytest.raises(ServiceUnavailable) as info:
        await engine.detect(["Jane Doe lives in Paris"])
    assert info.value.code == "detector_failed"
    assert "Jane" not in info.value.message


async def test_patterns_only_needs_no_pool() -> None:
    engine = DetectionEngine(["patterns"])
    assert engine.ready
    spans = await engine.detect(["mail a@b.example", ""])
    assert [s.entity for s in spans[0]] == ["EMAIL"]
    assert spans[1] == []


async def test_cache_pays_only_for_new_texts() -> None:
    engine = DetectionEngine(["patterns"])
    turn1 = ["mail a@b.example", "hello"]
    first = await engine.detect(turn1)
    assert (engine.cache.hits, engine.cache.misses) == (0, 2)
    second = await engine.detect([*turn1, "and c@d.example"])
    assert (engine.cache.hits, engine.cache.misses) == (2, 3)
    assert second[:2] == first
    assert [s.entity for s in second[2]] == ["EMAIL"]


def test_cache_is_bounded_and_keyed_by_hmac() -> None:
    cache = SpanCache(capacity=2)
    for text in ("a", "b", "c"):
        cache.put(cache.key(text), [])
    assert cache.get(cache.key("a")) is None  # evicted, least recently used
    assert cache.get(cache.key("c")) == []
    assert cache.key("a") != SpanCache().key("a")  # a per-process secret key


async def test_close_stops_ner_workers_promptly() -> None:
    import time  # noqa: PLC0415

    engine = DetectionEngine(["patterns", "presidio"])
    await engine.start()
    assert engine.ready
    spans = await engine.detect(["Angela Merkel visited Paris."])
    assert {s.entity for s in spans[0]} >= {"PERSON", "LOCATION"}
    started = time.monotonic()
    await engine.close()
    assert time.monotonic() - started < 2
