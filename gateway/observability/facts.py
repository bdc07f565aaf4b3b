"""What the audit record and the metrics say about one request: the typed outcome of each stage,
each set exactly once, and the record built once from them when the request ends.

Only facts: names from config (tenant, key name, model, backend), entity types and counts,
the decision and the rule behind it, every fail-open that happened, the tokens the upstream
counted, timings. Never a value from the request or the reply.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.errors import FactAlreadySet
from gateway.ingress.usage import Usage


@dataclass(frozen=True)
class Decided:
    """What the protect stage made of the request (from `gateway.protect.Protection`)."""

    outcome: str  # forward | block
    rule: str
    data_classes: tuple[str, ...] = ()
    entities: Mapping[str, int] = field(default_factory=dict)  # type -> findings
    masked: Mapping[str, int] = field(default_factory=dict)  # type -> findings rewritten
    detectors: tuple[str, ...] = ()  # detectors whose findings were acted on
    scores: Mapping[str, float] | None = None  # decrypted semantic scores (numbers)
    attachments: Mapping[str, int] = field(default_factory=dict)  # kind -> sent unscanned
    failed_open: tuple[str, ...] = ()  # detector, scorer
    detection_cpu_s: float = 0.0  # CPU the detectors spent on this request


@dataclass(frozen=True)
class Routed:
    backend: str
    attestation: str | None  # digest of the chosen backend's verified evidence
    failed_open: bool = False  # no backend met the trust level; the policy sent it anyway


@dataclass(slots=True)
class RequestFacts:
    route: str
    tenant: str | None = None
    key: str | None = None  # the API key's configured name
    model: str | None = None
    stream: bool = False
    policy: str | None = None  # digest of the policy that decided
    decided: Decided | None = None
    routed: Routed | None = None
    refusal: str | None = None  # the error code the request ended with, if it did
    status_class: str | None = None  # refused (4xx) | failed (5xx)
    body_bytes: int = 0  # of the request body, once read
    usage: Usage | None = None  # the reply's, as the upstream counted it
    # (stage, perf_counter at its end), starting with the request's start; turned into
    # durations only when read, which keeps marking a stage to one clock read.
    marks: list[tuple[str, float]] = field(default_factory=lambda: [("", time.perf_counter())])

    def admitted(self, tenant: str, key: str) -> None:
        self._once("tenant", tenant)
        self.key = key

    def parsed(self, model: str, stream: bool) -> None:
        self._once("model", model)
        self.stream = stream

    def chose(self, policy_digest: str) -> None:
        self._once("policy", policy_digest)

    def protected(self, decided: Decided) -> None:
        self._once("decided", decided)

    def sent(self, routed: Routed) -> None:
        self._once("routed", routed)

    def used(self, usage: Usage) -> None:
        self._once("usage", usage)

    def ended_with(self, code: str, status: int) -> None:
        self._once("refusal", code)
        self.status_class = "refused" if status < 500 else "failed"

    def _once(self, name: str, value: Any) -> None:
        if getattr(self, name) is not None:
            raise FactAlreadySet(f"request fact {name!r} set twice")
        setattr(self, name, value)

    def stage(self, name: str) -> None:
        """Close the stage that ran since the previous mark."""
        self.marks.append((name, time.perf_counter()))

    def stage_seconds(self) -> dict[str, float]:
        marks = self.marks
        return {name: end - marks[i][1] for i, (name, end) in enumerate(marks[1:])}

    @property
    def decision(self) -> str:
        """forwarded | blocked | refused | failed."""
        if self.decided is not None and self.decided.outcome == "block":
            return "blocked"
        return self.status_class or "forwarded"

    @property
    def failed_open(self) -> tuple[str, ...]:
        kinds = self.decided.failed_open if self.decided is not None else ()
        return kinds + (("evidence",) if self.routed is not None and self.routed.failed_open
                        else ())

    def record(self, request_id: str, status: int, total_ms: float,
               stage_seconds: dict[str, float]) -> dict[str, Any]:
        """The audit record; `stage_seconds` as computed once for the metrics too."""
        decided, routed = self.decided, self.routed
        return {
            "request_id": request_id, "tenant": self.tenant, "key": self.key,
            "route": self.route,
            "model": self.model, "stream": self.stream, "policy": self.policy,
            "detectors": list(decided.detectors) if decided else [],
            "entities": dict(sorted(decided.entities.items())) if decided else {},
            "data_classes": list(decided.data_classes) if decided else [],
            "semantic": dict(decided.scores) if decided and decided.scores else None,
            "attachments_unscanned": dict(sorted(decided.attachments.items()))
            if decided else {},
            "decision": self.decision,
            "rule": decided.rule if decided else self.refusal,
            "error": self.refusal,
            "failed_open": list(self.failed_open),
            "detection_cpu_ms": round(decided.detection_cpu_s * 1000, 3) if decided else 0.0,
            "backend": routed.backend if routed else None,
            "attestation": routed.attestation if routed else None, "status": status,
            "usage": self.usage.record() if self.usage else None,
            "latency_ms": {**{name: round(seconds * 1000, 3)
                                for name, seconds in stage_seconds.items()},
                             "total": round(total_ms, 3)},
        }


FACTS = web.RequestKey("facts", RequestFacts)
