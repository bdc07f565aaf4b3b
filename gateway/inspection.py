"""The inspect stage: run a compiled policy's detectors over a request's data and, when it has
`semantic` rules, have the scorer score it (beside detection), honouring the policy's fail
modes. The result is the input of the pure protect stage.

Closed by default: a detector or a scorer that fails refuses the request (503). Open only when
the policy says so: then the findings (or scores) are empty, the fail-open is part of the
result, and the audit record and `veil_failed_open_total` say so. Either way every failed
detector is counted (`on_detector_failure`, which app.py points at
`veil_detector_failures_total`): what raised, and on a time limit each detector still running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.errors import DetectionTimedOut, DetectorFailed, ScorerError, ScorerFailed
from gateway.fhe.semantic import SemanticScorer
from gateway.observability.logging import get_logger
from gateway.privacy.engine import DetectionEngine
from gateway.privacy.spans import Span
from gateway.protect import CompiledPolicy, Detections, Scores

log = get_logger("veil.inspect")


@dataclass(frozen=True)
class Reading:
    """The request's data as detectors read it: each text, and where in it the slot's own text
    starts (a free-form JSON value is read after its key, `password: ...`)."""

    texts: Sequence[str]
    offsets: Sequence[int]

    @classmethod
    def plain(cls, texts: Sequence[str]) -> Reading:
        return cls(texts, [0] * len(texts))

    def own(self) -> list[str]:
        return [text[offset:] for text, offset in zip(self.texts, self.offsets, strict=True)]


class Inspector:
    def __init__(self, engine: DetectionEngine, semantic: SemanticScorer | None = None, *,
                 on_detector_failure: Callable[[str, str], None] = lambda d, r: None) -> None:
        self.engine = engine
        self.semantic = semantic
        self._on_detector_failure = on_detector_failure

    async def inspect(self, reading: Reading, compiled: CompiledPolicy
                      ) -> tuple[Detections, Scores]:
        rules = compiled.policy.semantic
        scoring = asyncio.create_task(self._scores(reading.own(), compiled)) \
            if rules and reading.texts else None
        try:
            detections = await self.detect(reading, compiled)
        except BaseException:
            if scoring is not None:
                scoring.cancel()
            raise
        return detections, (await scoring if scoring is not None else Scores())

    async def detect(self, reading: Reading, compiled: CompiledPolicy) -> Detections:
        """The policy's detectors over every text, in the engine's one order (patterns,
        plugins, NER)."""
        if not reading.texts or not compiled.policy.scans:
            return Detections([[] for _ in reading.texts])
        limit = compiled.policy.detectors.time_limit_s
        pending: set[str] = set()
        try:
            async with asyncio.timeout(limit):
                found = await self.engine.detect(list(reading.texts), compiled.selection,
                                                 pending)
        except (DetectorFailed, TimeoutError) as exc:
            failure = exc if isinstance(exc, DetectorFailed) else DetectionTimedOut(limit)
            if isinstance(exc, DetectorFailed):
                self._on_detector_failure(exc.detector, exc.reason)
            else:  # the engine's own steps, if no detector was left running
                for detector in sorted(pending) or ["engine"]:
                    self._on_detector_failure(detector, "timeout")
            if compiled.policy.fail_mode.detector == "closed":
                log.warning("detection_refused", policy=compiled.loaded.name,
                            code=failure.code)
                raise failure from None
            # The policy says so explicitly: forward what the detectors did not see.
            # Deny-list terms still apply (they need no detector).
            log.warning("detector_failed_open", policy=compiled.loaded.name, code=failure.code)
            return Detections([[] for _ in reading.texts], failed_open=True)
        return Detections([_own(spans, offset) for spans, offset
                           in zip(found.spans, reading.offsets, strict=True)],
                          cpu_seconds=found.cpu_seconds)

    async def _scores(self, texts: list[str], compiled: CompiledPolicy) -> Scores:
        if self.semantic is None:
            return self._scorer_failed("encrypted scoring is not configured (fhe.scorers)",
                                       compiled)
        try:
            return Scores(await self.semantic.scores(texts, compiled.policy.semantic))
        except ScorerError as exc:
            return self._scorer_failed(str(exc), compiled)

    @staticmethod
    def _scorer_failed(reason: str, compiled: CompiledPolicy) -> Scores:
        if compiled.policy.fail_mode.scorer == "closed":
            log.error("scorer_failed", reason=reason)
            raise ScorerFailed
        log.warning("scorer_failed_open", reason=reason)
        return Scores(failed_open=True)


def _own(spans: Sequence[Span], offset: int) -> list[Span]:
    """Spans found in a value read after its key, moved back to the value's own offsets
    (what falls in the key is the key's own slot's business)."""
    if not offset:
        return list(spans)
    return [Span(max(s.start, offset) - offset, s.end - offset, s.entity, s.score, s.detector)
            for s in spans if s.end > offset]
