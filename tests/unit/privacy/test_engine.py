from __future__ import annotations

import pytest

from gateway.errors import ServiceUnavailable
from gateway.privacy.engine import DetectionEngine


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
