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
import contextlib
import hashlib
import hmac
import multiprocessing
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import DetectorFailed
from gateway.observability.logging import get_logger
from gateway.plugins import load_detector
from gateway.privacy.patterns import PatternDetector
from gateway.privacy.spans import Detector, Span

log = get_logger("veil.privacy")

_worker_ner: object = None


def _init_worker(log_level: str, log_format: str, pids: Any) -> None:
    """Runs in each worker process: spaCy and Presidio are imported there, never in the
    gateway's own process, which stays small and quick to start. Their log lines go through
    the same redacting chain as the gateway's. The worker says who it is first, so that
    `close()` can stop it even while it is still loading the model."""
    global _worker_ner  # noqa: PLW0603 (one detector per worker process, loaded once)
    pids.put(os.getpid())
    from gateway.observability.logging import configure_logging  # noqa: PLC0415
    from gateway.privacy.presidio import PresidioDetector  # noqa: PLC0415

    configure_logging(log_level, log_format)

    _worker_ner = PresidioDetector()
    _worker_ner.detect("warm up")


def _ner(texts: list[str]) -> list[list[Span]]:
    detect = getattr(_worker_ner, "detect", None)
    if detect is None:
        raise RuntimeError("NER worker has no detector")
    return batched(detect, texts)


BATCH_CHARS = 2000  # short texts are joined into documents of about this size for NER
SEPARATOR = "\n\n"


def batched(detect: Callable[[str], list[Span]], texts: Sequence[str]) -> list[list[Span]]:
    """`detect` over every text, short ones joined into one document per batch: a request's
    JSON carries many tiny strings (schema keys, tool-result fields), and one NER call costs
    about 2 ms however short its text. Spans come back to the text they fall in, clipped at
    its edges (a span that runs across the separator into the next text is cut in two)."""
    found: list[list[Span]] = [[] for _ in texts]
    group: list[int] = []
    size = 0
    for i, text in enumerate(texts):
        if not text.strip():
            continue
        if len(text) >= BATCH_CHARS:
            found[i] = detect(text)
            continue
        if size + len(text) > BATCH_CHARS:
            _detect_joined(detect, texts, group, found)
            group, size = [], 0
        group.append(i)
        size += len(text) + len(SEPARATOR)
    _detect_joined(detect, texts, group, found)
    return found


def _detect_joined(detect: Callable[[str], list[Span]], texts: Sequence[str],
                   group: list[int], found: list[list[Span]]) -> None:
    if len(group) == 1:
        found[group[0]] = detect(texts[group[0]])
    if len(group) <= 1:
        return
    starts, at = [], 0
    for i in group:
        starts.append(at)
        at += len(texts[i]) + len(SEPARATOR)
    joined = SEPARATOR.join(texts[i] for i in group)
    for span in detect(joined):
        for i, start in zip(group, starts, strict=True):
            lo, hi = max(span.start, start), min(span.end, start + len(texts[i]))
            if lo < hi and joined[lo:hi].strip():
                found[i].append(Span(lo - start, hi - start, span.entity, span.score,
                                     span.detector))


@dataclass(frozen=True)
class Selection:
    """Which detectors a policy runs: built-in names and plugin references."""

    builtin: frozenset[str]
    plugins: tuple[str, ...] = ()

    @property
    def tag(self) -> bytes:
        """Part of the cache key: the same text scanned by other detectors is another entry."""
        return ",".join([*sorted(self.builtin), "|", *self.plugins]).encode() + b"\0"


class SpanCache:
    """Least-recently-used map from HMAC(detectors, text) to the spans found in it."""

    def __init__(self, capacity: int = 4096) -> None:
        self._key = secrets.token_bytes(32)
        self._capacity = capacity
        self._entries: OrderedDict[bytes, list[Span]] = OrderedDict()
        self.hits = self.misses = 0

    def key(self, text: str, tag: bytes = b"") -> bytes:
        mac = hmac.new(self._key, tag, hashlib.sha256)
        mac.update(text.encode("utf-8", "surrogatepass"))
        return mac.digest()

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
    """One per worker, shared by every policy: each request names the detectors its policy
    runs. `prepare` is called before a policy takes effect, so a policy never meets a detector
    that is not loaded (a plugin) or not running (the NER pool)."""

    def __init__(self, ner_workers: int = 1, *, cache: SpanCache | None = None,
                 log_level: str = "info", log_format: str = "json") -> None:
        self._log = (log_level, log_format)
        self._patterns = PatternDetector()
        self._plugins: dict[str, Detector] = {}
        self._workers = ner_workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._pids: Any = None  # the workers' pids, as they report them
        self._warm_up: asyncio.Future[list[list[list[Span]]]] | None = None
        self._ner_ready = False
        self._needs_ner = False
        self.cache = cache or SpanCache()

    async def prepare(self, selections: Sequence[Selection]) -> None:
        """Load plugins and start NER as the selections need (raises PluginError)."""
        for reference in sorted({p for s in selections for p in s.plugins}):
            if reference not in self._plugins:
                self._plugins[reference] = load_detector(reference)
        if any("presidio" in s.builtin for s in selections):
            self._needs_ner = True
            await self._start_ner()

    async def _start_ner(self) -> None:
        """Start the pool (once) and load the model in every worker before reporting ready;
        the pool is kept from the start, so that `close()` can stop workers still loading."""
        if self._warm_up is None:
            context = multiprocessing.get_context("spawn")
            self._pids = context.SimpleQueue()
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self._workers, mp_context=context,
                initializer=_init_worker, initargs=(*self._log, self._pids))
            loop = asyncio.get_running_loop()
            self._warm_up = asyncio.gather(*[loop.run_in_executor(self._pool, _ner, ["warm up"])
                                             for _ in range(self._workers)])
        await asyncio.shield(self._warm_up)
        self._ner_ready = True

    async def close(self) -> None:
        """Stop the NER workers now: a worker still loading its model cannot be interrupted
        any other way, and shutdown must not wait for it. Workers are found among this
        process's live children by the pids they reported (never a pid that was reused)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        self._ner_ready = False
        warm_up, self._warm_up = self._warm_up, None
        if warm_up is not None and not warm_up.done():
            warm_up.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # cancelled above
                await warm_up
        pool.shutdown(wait=False, cancel_futures=True)
        ours: set[int] = set()
        while self._pids is not None and not self._pids.empty():
            ours.add(self._pids.get())
        for process in multiprocessing.active_children():
            if process.pid in ours:
                process.terminate()

    @property
    def ready(self) -> bool:
        return not self._needs_ner or self._ner_ready

    async def detect(self, texts: list[str], selection: Selection) -> list[list[Span]]:
        keys = [self.cache.key(t, selection.tag) for t in texts]
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, spans in enumerate(found) if spans is None]
        if missing:
            fresh = await self._detect([texts[i] for i in missing], selection)
            for i, spans in zip(missing, fresh, strict=True):
                found[i] = spans
                self.cache.put(keys[i], spans)
        return [spans or [] for spans in found]

    async def _detect(self, texts: list[str], selection: Selection) -> list[list[Span]]:
        try:
            found: list[list[Span]] = batched(self._patterns.detect, texts) \
                if "patterns" in selection.builtin else [[] for _ in texts]
            for reference in selection.plugins:
                plugin = self._plugins[reference]
                found = [[*spans, *plugin.detect(t)] for spans, t in zip(found, texts,
                                                                         strict=True)]
            if "presidio" in selection.builtin and any(t.strip() for t in texts):
                ner = await self._ner(texts)
                found = [[*a, *b] for a, b in zip(found, ner, strict=True)]
        except Exception as exc:
            # Type only: a detector's exception message may quote the text it was given.
            log.error("detector_failed", error_type=type(exc).__name__)  # noqa: TRY400
            raise DetectorFailed from None
        return found

    async def _ner(self, texts: list[str]) -> list[list[Span]]:
        if self._pool is None or not self._ner_ready:
            raise RuntimeError("NER pool is not running")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _ner, texts)

