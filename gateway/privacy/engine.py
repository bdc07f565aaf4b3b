"""Run the configured detectors over a request's texts.

The pattern tier runs inline (microseconds). NER runs in a process pool, so the event loop
keeps relaying other streams while a large prompt is analysed. Any detector failure fails the
request closed: nothing is forwarded that was not fully scanned.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
from collections.abc import Sequence

from gateway.errors import ServiceUnavailable
from gateway.observability.logging import get_logger
from gateway.privacy.patterns import PatternDetector
from gateway.privacy.spans import Span

log = get_logger("veil.privacy")

_worker_ner: object = None


def _init_worker() -> None:
    """Runs in each worker process: spaCy and Presidio are imported there, never in the
    gateway's own process, which stays small and quick to start."""
    global _worker_ner  # noqa: PLW0603 (one detector per worker process, loaded once)
    from gateway.privacy.presidio import PresidioDetector  # noqa: PLC0415

    _worker_ner = PresidioDetector()
    _worker_ner.detect("warm up")


def _ner(texts: list[str]) -> list[list[Span]]:
    detect = getattr(_worker_ner, "detect", None)
    if detect is None:
        raise RuntimeError("NER worker has no detector")
    return [detect(text) if text.strip() else [] for text in texts]


class DetectionEngine:
    def __init__(self, detectors: Sequence[str], ner_workers: int = 1) -> None:
        self._patterns = PatternDetector() if "patterns" in detectors else None
        self._use_ner = "presidio" in detectors
        self._workers = ner_workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    async def start(self) -> None:
        if not self._use_ner:
            return
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self._workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker)
        # Load the model in every worker before reporting ready.
        loop = asyncio.get_running_loop()
        await asyncio.gather(*[loop.run_in_executor(self._pool, _ner, ["warm up"])
                               for _ in range(self._workers)])

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    @property
    def ready(self) -> bool:
        return not self._use_ner or self._pool is not None

    async def detect(self, texts: list[str]) -> list[list[Span]]:
        try:
            found = [self._patterns.detect(t) if self._patterns else [] for t in texts]
            if self._use_ner and any(t.strip() for t in texts):
                ner = await self._ner(texts)
                found = [[*a, *b] for a, b in zip(found, ner, strict=True)]
        except Exception as exc:
            # Type only: a detector's exception message may quote the text it was given.
            log.error("detector_failed", error_type=type(exc).__name__)  # noqa: TRY400
            raise ServiceUnavailable("A detector failed; the request was not forwarded.",
                                     code="detector_failed") from None
        return found

    async def _ner(self, texts: list[str]) -> list[list[Span]]:
        if self._pool is None:
            raise RuntimeError("NER pool is not running")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _ner, texts)
