"""Prometheus metrics. Label values are route names, backend names, status codes and outcomes
from fixed sets, names from config (tenants, API keys' names, models), never anything a client
wrote.

With several workers, `veil serve` sets PROMETHEUS_MULTIPROC_DIR before this module is imported
and `/metrics` aggregates every worker's values.

The metrics every request touches (requests, latency, stage times, upstream answers, requests
in flight) are tallied in plain Python on the request path and moved into prometheus_client by
`sync()`: before every render and once a second (`run_sync`), so that with several workers the
others' values are at most a second old. prometheus_client takes a lock per value and walks
the buckets in Python for every observation; on the request path that was 8% of the gateway's
instructions per request.

`process_*` describe the gateway's worker processes together, one series each whatever the
number of workers: CPU seconds, memory and open files summed over the live workers (CPU
seconds over every worker that ran, so the counter never goes back), start time and the file
limit the smallest of any live worker. NER workers are not included (their CPU is in
`veil_detection_cpu_seconds`). No `*_created` series: nobody reads them and they double the
page.
"""

from __future__ import annotations

import asyncio
import os
import platform
from bisect import bisect_left
from typing import Any, ClassVar, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from gateway import __version__
from gateway.observability.facts import RequestFacts

disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0, 120.0)


SYNC_INTERVAL_S = 1.0


class CounterTally:
    """Increments of one labelled counter since the last sync."""

    __slots__ = ("_child", "pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.pending = 0

    def sync(self) -> None:
        if self.pending:
            pending, self.pending = self.pending, 0
            self._child.inc(pending)


class HistogramTally:
    """Observations of one labelled histogram since the last sync, as bucket counts and a sum.
    A bucket is found by bisection with the same rule as prometheus_client's (the first upper
    bound >= the value; past the last one, +Inf)."""

    __slots__ = ("_child", "_counts", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._sum += seconds

    def sync(self) -> None:
        """Add the tallies to the child's bucket and sum values: prometheus_client has no
        public call that adds many observations at once, so this reaches into the child's
        `_buckets` and `_sum` (the same value objects observe() increments). That layout is
        prometheus_client's own: pyproject pins the minor versions it was checked against,
        and tests/unit/observability/test_metrics.py renders both ways and compares, so an
        upgrade that changes it fails the tests instead of the counts."""
        counts, total = self._counts, self._sum
        if not any(counts):
            return
        self._counts, self._sum = [0] * len(counts), 0.0
        for bucket, count in zip(self._child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
        self._child._sum.inc(total)


class ProcessMetrics:
    """This worker's `process_*` (prometheus_client's ProcessCollector reads them from /proc)
    copied into metrics that the multiprocess collector adds up across workers; the collector
    itself is not used for the page because with several workers it would describe whichever
    worker answered the scrape. Copied on every sync, so at most a second old."""

    GAUGES: ClassVar[dict[str, tuple[Literal["livesum", "livemin"], str]]] = {
        # name -> how workers' values combine (multiprocess mode), and the help text
        "process_resident_memory_bytes": ("livesum", "Resident memory, summed over workers."),
        "process_virtual_memory_bytes": ("livesum", "Virtual memory, summed over workers."),
        "process_open_fds": ("livesum", "Open file descriptors, summed over workers."),
        "process_max_fds": ("livemin", "The smallest open-file limit of any worker."),
        "process_start_time_seconds": ("livemin", "Start time of the oldest live worker, in "
                                                  "seconds since the epoch."),
    }

    def __init__(self, registry: CollectorRegistry) -> None:
        self._source = ProcessCollector(registry=None)
        self._cpu = Counter("process_cpu_seconds", "User and system CPU time, summed over "
                            "every worker.", registry=registry)
        self._cpu_seen = 0.0
        self._gauges = {name: Gauge(name, text, registry=registry, multiprocess_mode=mode)
                        for name, (mode, text) in self.GAUGES.items()}

    def sync(self) -> None:
        for family in self._source.collect():
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total":
                    if sample.value > self._cpu_seen:
                        self._cpu.inc(sample.value - self._cpu_seen)
                        self._cpu_seen = sample.value
                elif sample.name in self._gauges:
                    self._gauges[sample.name].set(sample.value)


# What `veil_detector_failures_total` counts a failure as: a fixed set, never an exception's
# message (which may quote the text the detector was given).
DETECTOR_FAILURE_REASONS = frozenset({"timeout", "crashed", "unavailable", "error"})


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
        self.detection_cpu = Histogram("veil_detection_cpu_seconds",
                                       "CPU the detectors spent on a request (the gateway's "
                                       "and its NER workers'), by route.", ["route"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.ner_restarts = Counter("veil_ner_worker_restarts_total",
                                    "NER workers replaced, by reason (died, memory, timeout).",
                                    ["reason"], registry=r)
        self.failed_open = Counter("veil_failed_open_total",
                                   "Requests forwarded despite a failed dependency, because the "
                                   "policy says fail_mode: open.", ["dependency"], registry=r)
        self.attestations = Counter("veil_attestations_total",
                                    "Backend attestations, by result (verified: the backend's "
                                    "own evidence | shared: another replica's, verified here | "
                                    "refused).",
                                    ["backend", "result"], registry=r)
        self.scorer_seconds = Histogram("veil_scorer_duration_seconds",
                                        "Encrypted scoring round trips, by scorer.", ["scorer"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.policy_reloads = Counter("veil_policy_reloads_total",
                                      "Policy reloads, by result (ok: swapped in; error: the "
                                      "old policies stay in force).", ["result"], registry=r)
        self.policy_active = Gauge("veil_policy_active", "1 for each policy in force.",
                                   ["policy", "digest"], registry=r, multiprocess_mode="livemax")
        self.backend_up = Gauge("veil_backend_up",
                                "0 while a backend is ejected (failures in a row, or a failed "
                                "probe), 1 otherwise.", ["backend"], registry=r,
                                multiprocess_mode="livemin")
        self.ejections = Counter("veil_backend_ejections_total",
                                 "Backends ejected for failing too many times in a row.",
                                 ["backend"], registry=r)
        self.retries = Counter("veil_upstream_retries_total",
                               "Failover attempts on another backend, by outcome (retried | "
                               "budget_exhausted).", ["outcome"], registry=r)
        self.connections_open = Gauge("veil_connections_open", "Client connections open.",
                                      registry=r, multiprocess_mode="livesum")
        self.connections_closed = Counter(
            "veil_connections_closed_total", "Client connections the gateway closed or refused, "
            "by reason (header_timeout, idle_timeout, max_connections, "
            "max_connections_per_client).", ["reason"], registry=r)
        self.protocol_errors = Counter("veil_protocol_errors_total",
                                       "Requests that were not valid HTTP, by kind.", ["kind"],
                                       registry=r)
        self.state_failures = Counter("veil_state_failures_total",
                                      "Calls to the shared store (Redis) that failed or timed "
                                      "out, or held a record no gateway wrote, by concern "
                                      "(rate_limits | budgets | stored_responses | "
                                      "conversations | fhe_keys | attestation | collateral).",
                                      ["concern"],
                                      registry=r)
        self.tokens = Counter("veil_tokens_total",
                              "Tokens replies used, as the upstream counted them, by tenant, "
                              "API key (its configured name), model and kind (input | output).",
                              ["tenant", "key", "model", "kind"], registry=r)
        self.detector_failures = Counter(
            "veil_detector_failures_total", "Detectors that failed on a request, by detector "
            "(patterns | gazetteer | presidio | a plugin's reference) and reason (timeout: "
            "still running at the policy's time limit | crashed: its NER worker died | "
            "unavailable: no NER worker alive | error: it raised or answered malformed).",
            ["detector", "reason"], registry=r)
        self.build_info = Gauge("veil_build_info", "1, labelled with the gateway's version "
                                "and the Python running it.", ["version", "python"],
                                registry=r, multiprocess_mode="livemax")
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.process = ProcessMetrics(r)
        self.in_flight_now = 0  # requests being handled, kept by the request middleware
        self.connections_now = 0  # kept by the connection guard
        self._counters: dict[tuple[Any, tuple[str, ...]], CounterTally] = {}
        self._histograms: dict[tuple[Any, tuple[str, ...]], HistogramTally] = {}

    def _counter(self, metric: Counter, *labels: str) -> CounterTally:
        tally = self._counters.get((metric, labels))
        if tally is None:
            tally = self._counters[(metric, labels)] = CounterTally(metric.labels(*labels))
        return tally

    def _histogram(self, metric: Histogram, *labels: str) -> HistogramTally:
        tally = self._histograms.get((metric, labels))
        if tally is None:
            tally = self._histograms[(metric, labels)] = HistogramTally(metric.labels(*labels))
        return tally

    def stages(self, seconds_by_stage: dict[str, float]) -> None:
        for stage, seconds in seconds_by_stage.items():
            self._histogram(self.stage_seconds, stage).observe(seconds)

    def upstream_answered(self, backend: str, seconds: float) -> None:
        self._counter(self.upstream_requests, backend, "ok").pending += 1
        self._histogram(self.upstream_ttfb, backend).observe(seconds)

    def request_answered(self, route: str, status: int, seconds: float) -> None:
        self._counter(self.requests, route, str(status)).pending += 1
        self._histogram(self.request_seconds, route).observe(seconds)

    def outcome(self, facts: RequestFacts) -> None:
        """What the request's outcome adds: values masked by type, the blocking rule, every
        fail-open; counted once, from the same facts the audit record is built from."""
        decided = facts.decided
        if decided is not None:
            if decided.detection_cpu_s:
                self._histogram(self.detection_cpu, facts.route).observe(
                    decided.detection_cpu_s)
            for entity, count in decided.masked.items():
                self._counter(self.entities, entity).pending += count
            if decided.outcome == "block":
                self._counter(self.blocked, decided.rule).pending += 1
        for dependency in facts.failed_open:
            self._counter(self.failed_open, dependency).pending += 1
        usage = facts.usage
        if usage is not None:
            names = (facts.tenant or "", facts.key or "", facts.model or "")
            self._counter(self.tokens, *names, "input").pending += usage.input_tokens
            self._counter(self.tokens, *names, "output").pending += usage.output_tokens

    def connection_closed(self, reason: str) -> None:
        """`reason`: one of the connection guard's fixed set, never client data."""
        self._counter(self.connections_closed, reason).pending += 1

    def protocol_error(self, kind: str) -> None:
        """`kind`: one of the protocol-error kinds (gateway/ingress/connections.py)."""
        self._counter(self.protocol_errors, kind).pending += 1

    def detector_failed(self, detector: str, reason: str) -> None:
        """`detector`: a built-in name or a plugin reference from config; `reason`: one of
        DETECTOR_FAILURE_REASONS."""
        if reason not in DETECTOR_FAILURE_REASONS:
            raise ValueError(f"not a detector failure reason: {reason!r}")
        self.detector_failures.labels(detector, reason).inc()

    def sync(self) -> None:
        """Move the request path's tallies (and this process's figures) into
        prometheus_client."""
        self.process.sync()
        self.in_flight.set(self.in_flight_now)
        self.connections_open.set(self.connections_now)
        for counter in self._counters.values():
            counter.sync()
        for histogram in self._histograms.values():
            histogram.sync()

    async def run_sync(self) -> None:
        """Sync once a second until cancelled (then once more)."""
        try:
            while True:
                await asyncio.sleep(SYNC_INTERVAL_S)
                self.sync()
        finally:
            self.sync()

    def render(self) -> bytes:
        self.sync()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
