"""What the audit record and the metrics say about one request, filled in stage by stage.

Only facts: names from config (tenant, model, backend), entity types and counts, the decision
and the rule behind it, timings. Never a value from the request or the reply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(slots=True)
class RequestFacts:
    route: str
    tenant: str | None = None
    model: str | None = None
    backend: str | None = None
    attestation: str | None = None  # digest of the chosen backend's verified evidence
    stream: bool = False
    policy: str | None = None  # digest of the policy that decided
    data_classes: tuple[str, ...] = ()
    semantic: dict[str, float] | None = None  # decrypted scores (numbers, not content)
    entities: dict[str, int] = field(default_factory=dict)  # entity type -> findings
    detectors: set[str] = field(default_factory=set)
    attachments: dict[str, int] = field(default_factory=dict)  # kind -> forwarded unscanned
    decision: str = "forwarded"
    rule: str | None = None
    # (stage, perf_counter at its end), starting with the request's start; turned into
    # durations only when read, which keeps marking a stage to one clock read.
    marks: list[tuple[str, float]] = field(default_factory=lambda: [("", time.perf_counter())])

    def stage(self, name: str) -> None:
        """Close the stage that ran since the previous mark."""
        self.marks.append((name, time.perf_counter()))

    def stage_seconds(self) -> dict[str, float]:
        marks = self.marks
        return {name: end - marks[i][1] for i, (name, end) in enumerate(marks[1:])}

    def record(self, request_id: str, status: int, total_ms: float,
               stage_seconds: dict[str, float]) -> dict[str, Any]:
        """The audit record; `stage_seconds` as computed once for the metrics too."""
        return {
            "request_id": request_id, "tenant": self.tenant, "route": self.route,
            "model": self.model, "stream": self.stream, "policy": self.policy,
            "detectors": sorted(self.detectors), "entities": dict(sorted(self.entities.items())),
            "data_classes": list(self.data_classes), "semantic": self.semantic,
            "attachments_unscanned": dict(sorted(self.attachments.items())),
            "decision": self.decision, "rule": self.rule,
            "backend": self.backend, "attestation": self.attestation, "status": status,
            "latency_ms": {**{name: round(seconds * 1000, 3)
                                for name, seconds in stage_seconds.items()},
                             "total": round(total_ms, 3)},
        }


FACTS = web.RequestKey("facts", RequestFacts)
