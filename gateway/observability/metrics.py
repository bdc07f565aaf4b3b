"""Prometheus metrics. Label values are route names, backend names, status codes and outcomes
from fixed sets, never anything a client wrote.

With several workers, `veil serve` sets PROMETHEUS_MULTIPROC_DIR before this module is imported
and `/metrics` aggregates every worker's values.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("veil_requests_total", "Requests answered, by route and status.",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("veil_request_duration_seconds",
                                         "Time to answer (to the last byte), by route.",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("veil_requests_in_flight", "Requests being handled.",
                               registry=r, multiprocess_mode="livesum")
        self.upstream_requests = Counter("veil_upstream_requests_total",
                                         "Attempts to reach a backend, by outcome.",
                                         ["backend", "outcome"], registry=r)
        self.upstream_ttfb = Histogram("veil_upstream_ttfb_seconds",
                                       "Time until a backend's response headers arrived.",
                                       ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("veil_stage_duration_seconds",
                                       "Time spent in each pipeline stage.", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.blocked = Counter("veil_blocked_total", "Requests refused by a rule.", ["rule"],
                               registry=r)
        self.entities = Counter("veil_entities_masked_total",
                                "Sensitive values acted on in prompts, by entity type.",
                                ["entity"], registry=r)
        self.rate_limited = Counter("veil_rate_limited_total", "Requests refused with 429.",
                                    ["tenant"], registry=r)
        self.failed_open = Counter("veil_failed_open_total",
                                   "Requests forwarded despite a failed dependency, because the "
                                   "policy says fail_mode: open.", ["dependency"], registry=r)
        self.attestations = Counter("veil_attestations_total",
                                    "Backend attestations, by result (verified | refused).",
                                    ["backend", "result"], registry=r)
        self.scorer_seconds = Histogram("veil_scorer_duration_seconds",
                                        "Encrypted scoring round trips, by scorer.", ["scorer"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.policy_reloads = Counter("veil_policy_reloads_total",
                                      "Policy reloads, by result (ok: swapped in; error: the "
                                      "old policies stay in force).", ["result"], registry=r)
        self.policy_active = Gauge("veil_policy_active", "1 for each policy in force.",
                                   ["policy", "digest"], registry=r, multiprocess_mode="livemax")
        # labels() takes a lock and a dict lookup per call; on the request path we keep the
        # labelled children (label sets are small and fixed by config).
        self._answered: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}
        self._upstream_ok: dict[str, tuple[Any, Any]] = {}
        self._stages: dict[str, Any] = {}

    def stages(self, seconds_by_stage: dict[str, float]) -> None:
        for stage, seconds in seconds_by_stage.items():
            timer = self._stages.get(stage)
            if timer is None:
                timer = self._stages[stage] = self.stage_seconds.labels(stage)
            timer.observe(seconds)

    def upstream_answered(self, backend: str, seconds: float) -> None:
        children = self._upstream_ok.get(backend)
        if children is None:
            children = self._upstream_ok[backend] = (
                self.upstream_requests.labels(backend, "ok"), self.upstream_ttfb.labels(backend))
        children[0].inc()
        children[1].observe(seconds)

    def request_answered(self, route: str, status: int, seconds: float) -> None:
        counter = self._answered.get((route, status))
        if counter is None:
            counter = self._answered[(route, status)] = self.requests.labels(route, str(status))
        timer = self._timed.get(route)
        if timer is None:
            timer = self._timed[route] = self.request_seconds.labels(route)
        counter.inc()
        timer.observe(seconds)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
