"""Run the configured detectors over a request's texts.

The pattern tier runs inline (microseconds). NER runs in a process pool, so the event loop
keeps relaying other streams while a large prompt is analysed. Any detector failure fails the
request closed: nothing is forwarded that was not fully scanned.

Results are cached per text, keyed by an HMAC under a key that lives only in this process, so
a chat pays only for its newest message; the cache holds offsets and types, never text, and its
keys cannot be turned back into text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import multiprocessing
import secrets
from collections import OrderedDict
from collections.abc import Sequence

from gateway.errors import ServiceUnavailable
from gateway.observability.logging import get_logger
from gateway.privacy.patterns import PatternDetector
from gateway.privacy.spans import Detector, Span

log = get_logger("veil.privacy")

_worker_ner: object = None


def _init_worker(log_level: str, log_format: str) -> None:
    """Runs in each worker process: spaCy and Presidio are imported there, never in the
    gateway's own process, which stays small and quick to start. Their log lines go through
    the same redacting chain as the gateway's."""
    global _worker_ner  # noqa: PLW0603 (one detector per worker process, loaded once)
    from gateway.observability.logging import configure_logging  # noqa: PLC0415
    from gateway.privacy.presidio import PresidioDetector  # noqa: PLC0415

    configure_logging(log_level, log_format)

    _worker_ner = PresidioDetector()
    _worker_ner.detect("warm up")


def _ner(texts: list[str]) -> list[list[Span]]:
    detect = getattr(_worker_ner, "detect", None)
    if detect is None:
        raise RuntimeError("NER worker has no detector")
    return [detect(text) if text.strip() else [] for text in texts]


class SpanCache:
    """Least-recently-used map from HMAC(text) to the spans found in it."""

    def __init__(self, capacity: int = 4096) -> None:
        self._key = secrets.token_bytes(32)
        self._capacity = capacity
        self._entries: OrderedDict[bytes, list[Span]] = OrderedDict()
        self.hits = self.misses = 0

    def key(self, text: str) -> bytes:
        return hmac.new(self._key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def get(self, key: bytes) -> list[Span] | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found

    def put(self, key: bytes, spans: list[Span]) -> None:
        self._entries[key] = spans
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)


class DetectionEngine:
    def __init__(self, detectors: Sequence[str], ner_workers: int = 1, *,
                 cache: SpanCache | None = None, plugins: Sequence[Detector] = (),
                 log_level: str = "info", log_format: str = "json") -> None:
        self._log = (log_level, log_format)
        self._patterns = PatternDetector() if "patterns" in detectors else None
        self._plugins = list(plugins)
        self._use_ner = "presidio" in detectors
        self._workers = ner_workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.cache = cache or SpanCache()

    async def start(self) -> None:
        if not self._use_ner or self._pool is not None:
            return
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self._workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=self._log)
        # Load the model in every worker before reporting ready.
        loop = asyncio.get_running_loop()
        await asyncio.gather(*[loop.run_in_executor(self._pool, _ner, ["warm up"])
                               for _ in range(self._workers)])

    async def close(self) -> None:
        """Stop the NER workers now: a worker still loading its model cannot be interrupted
        any other way, and shutdown must not wait for it."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()

    @property
    def ready(self) -> bool:
        return not self._use_ner or self._pool is not None

    async def detect(self, texts: list[str]) -> list[list[Span]]:
        keys = [self.cache.key(t) for t in texts]
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, spans in enumerate(found) if spans is None]
        if missing:
            fresh = await self._detect([texts[i] for i in missing])
            for i, spans in zip(missing, fresh, strict=True):
                found[i] = spans
                self.cache.put(keys[i], spans)
        return [spans or [] for spans in found]

    async def _detect(self, texts: list[str]) -> list[list[Span]]:
        try:
            found = [self._patterns.detect(t) if self._patterns else [] for t in texts]
            for plugin in self._plugins:
                found = [[*spans, *plugin.detect(t)] for spans, t in zip(found, texts,
                                                                         strict=True)]
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
