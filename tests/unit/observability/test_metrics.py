"""The request path tallies metrics in plain Python and syncs them into prometheus_client; what
/metrics shows must be exactly what observing each value directly would have shown."""

from __future__ import annotations

import asyncio
import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.observability import metrics as metrics_module
from gateway.observability.metrics import LATENCY_BUCKETS, Metrics


def _direct_rendering(values: list[float]) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram("veil_request_duration_seconds",
                          "Time to answer (to the last byte), by route.", ["route"],
                          buckets=LATENCY_BUCKETS, registry=registry)
    for value in values:
        histogram.labels("chat").observe(value)
    return generate_latest(registry)


def _samples(page: bytes, prefix: bytes) -> list[bytes]:
    return [line for line in page.splitlines() if line.startswith(prefix)]


def test_tallied_histogram_renders_as_observed_one() -> None:
    rng = random.Random(7)
    # every bound exactly (a value equal to a bound belongs to that bucket), around them,
    # zero, and past the last bound (+Inf)
    values = [*LATENCY_BUCKETS, *(b * 1.0000001 for b in LATENCY_BUCKETS), 0.0, 500.0,
              *(rng.expovariate(20) for _ in range(500))]
    metrics = Metrics()
    half = len(values) // 2
    for value in values[:half]:
        metrics.request_answered("chat", 200, value)
    metrics.sync()  # two syncs: tallies are added, not set
    for value in values[half:]:
        metrics.request_answered("chat", 200, value)
    tallied = _samples(metrics.render(), b"veil_request_duration_seconds")
    direct = _samples(_direct_rendering(values), b"veil_request_duration_seconds")

    def counts(samples: list[bytes]) -> list[bytes]:
        return [s for s in samples if b"_sum" not in s and b"_created" not in s]

    assert counts(tallied) == counts(direct)
    # the sum is added in another order: equal up to rounding
    assert [float(s.split()[-1]) for s in tallied if b"_sum" in s] == \
        pytest.approx([float(s.split()[-1]) for s in direct if b"_sum" in s], rel=1e-12)
    assert b'veil_requests_total{route="chat",status="200"} %d.0' % len(values) \
        in metrics.render()


def test_stages_upstream_and_in_flight_reach_the_page() -> None:
    metrics = Metrics()
    metrics.stages({"ingress": 0.0002, "upstream": 0.003})
    metrics.upstream_answered("local", 0.002)
    metrics.in_flight_now = 3
    page = metrics.render().decode()
    assert 'veil_stage_duration_seconds_bucket{le="0.0005",stage="ingress"} 1.0' in page
    assert 'veil_stage_duration_seconds_bucket{le="0.005",stage="upstream"} 1.0' in page
    assert 'veil_upstream_requests_total{backend="local",outcome="ok"} 1.0' in page
    assert 'veil_upstream_ttfb_seconds_count{backend="local"} 1.0' in page
    assert "veil_requests_in_flight 3.0" in page


def test_background_sync_publishes_without_a_render(monkeypatch: pytest.MonkeyPatch) -> None:
    """With several workers, /metrics reads every worker's published values; a worker that
    is not asked must still publish on its own."""
    metrics = Metrics()
    monkeypatch.setattr(metrics_module, "SYNC_INTERVAL_S", 0.01)
    labels = {"route": "chat", "status": "200"}

    async def run() -> None:
        task = asyncio.create_task(metrics.run_sync())
        metrics.request_answered("chat", 200, 0.001)
        assert not metrics.registry.get_sample_value("veil_requests_total", labels)
        await asyncio.sleep(0.05)
        assert metrics.registry.get_sample_value("veil_requests_total", labels) == 1
        task.cancel()

    asyncio.run(run())


def test_detector_failure_reasons_are_a_fixed_set() -> None:
    metrics = Metrics()
    metrics.detector_failed("presidio", "crashed")
    with pytest.raises(ValueError, match="not a detector failure reason"):
        metrics.detector_failed("presidio", "Traceback: boom on jane@example.com")
    page = metrics.render().decode()
    assert 'veil_detector_failures_total{detector="presidio",reason="crashed"} 1.0' in page
    assert "jane@example.com" not in page


def test_no_created_series_and_process_cpu_only_grows() -> None:
    metrics = Metrics()
    metrics.request_answered("chat", 200, 0.01)
    metrics.detector_failed("patterns", "error")
    metrics.render()
    first = metrics.registry.get_sample_value("process_cpu_seconds_total")
    sum(i * i for i in range(2_000_000))  # some CPU
    page = metrics.render().decode()
    assert "_created" not in page
    second = metrics.registry.get_sample_value("process_cpu_seconds_total")
    assert first is not None
    assert second is not None
    assert 0 < first < second
