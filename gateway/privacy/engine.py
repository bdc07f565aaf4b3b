"""Run the configured detectors over a request's texts.

The pattern tier (linear in its input) runs inline for small inputs and in a thread above
`INLINE_CHARS`, so a big prompt never holds the event loop for long; plugins likewise. NER runs
in worker processes (`gateway.privacy.ner_pool`), batched across requests. Any detector failure
fails the request closed: nothing is forwarded that was not fully scanned; the failure names
the detector and why (for `veil_detector_failures_total`), and a caller may pass a `pending`
set to learn which detectors had not finished when it gave up (a time limit). The work a
request cost is measured (CPU seconds, here and in the NER workers).

Results are cached per text, keyed by an HMAC under a key that lives only in this process, so
a chat pays only for its newest message; the cache holds offsets and types, never text, and its
keys cannot be turned back into text. It is bounded by entries and by spans held.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.errors import DetectorFailed
from gateway.observability.logging import get_logger
from gateway.offload import off_loop_if_big
from gateway.plugins import load_detector
from gateway.privacy.batching import BATCH_CHARS, CHUNK_CHARS, assign, batched, documents
from gateway.privacy.gazetteer import GazetteerDetector
from gateway.privacy.ner_pool import NerPool
from gateway.privacy.normalize import Reading, reading
from gateway.privacy.patterns import PatternDetector
from gateway.privacy.spans import Detector, Span

log = get_logger("veil.privacy")
INLINE_CHARS = 16 * 1024  # more than this goes to a thread, off the event loop
CACHED_TEXT_CHARS = 64 * 1024  # longer texts are not cached (rarely repeated, costly to hold)
CACHED_SPANS = 200_000
SPLIT_WINDOW = 128  # characters each side of the join between two texts read as one


@dataclass(frozen=True)
class Found:
    spans: list[list[Span]]  # per text
    cpu_seconds: float  # spent on this request, here and in the NER workers


@dataclass(frozen=True)
class Selection:
    """Which detectors a policy runs: built-in names and plugin references."""

    builtin: frozenset[str]
    plugins: tuple[str, ...] = ()

    @property
    def names(self) -> set[str]:
        """The detectors' names as failures are counted under."""
        return {*self.builtin, *self.plugins}

    @property
    def tag(self) -> bytes:
        """Part of the cache key: the same text scanned by other detectors is another entry."""
        return ",".join([*sorted(self.builtin), "|", *self.plugins]).encode() + b"\0"


class SpanCache:
    """Least-recently-used map from HMAC(detectors, text) to the spans found in it."""

    def __init__(self, capacity: int = 4096, max_spans: int = CACHED_SPANS) -> None:
        self._key = secrets.token_bytes(32)
        self._capacity = capacity
        self._max_spans = max_spans
        self._spans = 0
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
        previous = self._entries.pop(key, None)
        self._spans -= len(previous) if previous is not None else 0
        self._entries[key] = spans
        self._spans += len(spans)
        while self._entries and (len(self._entries) > self._capacity
                                 or self._spans > self._max_spans):
            _, dropped = self._entries.popitem(last=False)
            self._spans -= len(dropped)


class DetectionEngine:
    """One per worker, shared by every policy: each request names the detectors its policy
    runs. `prepare` is called before a policy takes effect, so a policy never meets a detector
    that is not loaded (a plugin) or not running (the NER workers)."""

    def __init__(self, ner_workers: int | None = None, *, cache: SpanCache | None = None,
                 log_level: str = "info", log_format: str = "json",
                 ner_start_timeout_s: float = 120.0, ner_max_rss_mb: int = 1536,
                 on_restart: Callable[[str], None] = lambda reason: None) -> None:
        self._patterns = PatternDetector()
        self._plugins: dict[str, Detector] = {}
        self._gazetteer: GazetteerDetector | None = None
        self._pool = NerPool(ner_workers or os.cpu_count() or 1, log_level=log_level,
                             log_format=log_format, start_timeout_s=ner_start_timeout_s,
                             max_rss_bytes=ner_max_rss_mb * 1024 * 1024, on_restart=on_restart)
        self._needs_ner = False
        self._starting: asyncio.Future[None] | None = None
        self.cache = cache or SpanCache()

    async def prepare(self, selections: Sequence[Selection]) -> None:
        """Load plugins and the gazetteer's lists and start NER as the selections need
        (raises PluginError, WorkerStartFailed)."""
        for reference in sorted({p for s in selections for p in s.plugins}):
            if reference not in self._plugins:
                self._plugins[reference] = load_detector(reference)
        if self._gazetteer is None and any("gazetteer" in s.builtin for s in selections):
            self._gazetteer = await asyncio.to_thread(GazetteerDetector)  # half a second
        if any("presidio" in s.builtin for s in selections):
            self._needs_ner = True
            if self._starting is None:
                self._starting = asyncio.ensure_future(self._pool.start())
            await asyncio.shield(self._starting)

    async def close(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        await self._pool.close()

    @property
    def ready(self) -> bool:
        """Whether every detector a policy may name can run now (false while no NER worker is
        alive)."""
        return not self._needs_ner or self._pool.ready

    @property
    def ner_workers(self) -> int:
        return self._pool.size

    async def detect(self, texts: list[str], selection: Selection,
                     pending: set[str] | None = None) -> Found:
        """`pending`: filled with the selection's detector names, each removed as it
        finishes; what is left when the caller stops waiting had not finished."""
        pending = set() if pending is None else pending
        pending.update(selection.names)
        keys = [self.cache.key(t, selection.tag) for t in texts]
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, spans in enumerate(found) if spans is None]
        cpu = 0.0
        if missing:
            fresh, cpu = await self._detect([texts[i] for i in missing], selection, pending)
            for i, spans in zip(missing, fresh, strict=True):
                found[i] = spans
                if len(texts[i]) <= CACHED_TEXT_CHARS:
                    self.cache.put(keys[i], spans)
        pending.clear()
        per_text = [spans or [] for spans in found]
        if "patterns" in selection.builtin and len(texts) > 1:
            pending.add("patterns")
            per_text = await off_loop_if_big(sum(len(t) for t in texts), self._across, texts,
                                             per_text)
            pending.clear()
        return Found(per_text, cpu)

    def _across(self, texts: list[str], found: list[list[Span]]) -> list[list[Span]]:
        """Values split between one text and the next ("john.doe" in one content part,
        "@example.com" in the next; a card across two messages): the pattern tier reads the
        end of each text joined to the start of the next, and a value across the join becomes
        a span on each side. Texts keep their own spans (cached, never changed in place)."""
        out = [list(spans) for spans in found]
        for i in range(len(texts) - 1):
            left, right = texts[i][-SPLIT_WINDOW:], texts[i + 1][:SPLIT_WINDOW]
            if not left.strip() or not right.strip():
                continue
            read = reading(left + right)
            offset = len(texts[i]) - len(left)
            for span in (read.original(s) for s in self._patterns.detect(read.text)):
                if not span.start < len(left) < span.end:
                    continue
                mine = Span(offset + span.start, len(texts[i]), span.entity, span.score,
                            "across")
                theirs = Span(0, span.end - len(left), span.entity, span.score, "across")
                # A value either text holds whole is not split: "a@example.org." + "Also"
                # reads as the domain example.org.also, which is no one's address.
                if not (_seen(mine, found[i]) or _seen(theirs, found[i + 1])):
                    out[i].append(mine)
                    out[i + 1].append(theirs)
        return out

    async def _detect(self, texts: list[str], selection: Selection, pending: set[str]
                      ) -> tuple[list[list[Span]], float]:
        """Every detector reads the texts' reading form (`normalize`); what they find is
        mapped back onto the characters the client sent."""
        total = sum(len(t) for t in texts)
        readings = await off_loop_if_big(total, _readings, texts)
        found, cpu = await self._detect_read([r.text for r in readings], selection, pending)
        return [[r.original(s) for s in spans] if r.edits else spans
                for r, spans in zip(readings, found, strict=True)], cpu

    async def _detect_read(self, texts: list[str], selection: Selection, pending: set[str]
                           ) -> tuple[list[list[Span]], float]:
        try:
            if "presidio" not in selection.builtin or not any(t.strip() for t in texts):
                return await self._local(texts, selection, pending)
            # NER first, so its job is queued while the pattern tier runs here
            (ner, ner_cpu), (found, cpu) = await asyncio.gather(
                self._ner(texts, pending), self._local(texts, selection, pending))
        except DetectorFailed:
            raise  # the NER pool refused (logged there) or a local detector raised
        except Exception as exc:  # the engine's own steps around the detectors
            log.error("detector_failed", detector="engine",  # noqa: TRY400
                      error_type=type(exc).__name__)
            raise DetectorFailed("engine", "error") from None
        return [[*a, *b] for a, b in zip(found, ner, strict=True)], cpu + ner_cpu

    async def _ner(self, texts: list[str], pending: set[str]
                   ) -> tuple[list[list[Span]], float]:
        """Documents go to the pool: texts joined, long ones chunked, and the whole cut into
        as many parts as the pool shares it among."""
        total = sum(len(t) for t in texts)
        shares = self._pool.shares(total)
        part = total // shares + total // (10 * shares) + 1  # cuts fall back to a space
        docs = await off_loop_if_big(total, documents, texts, chunk=min(CHUNK_CHARS, part),
                                     batch=min(BATCH_CHARS, part))
        per_doc, cpu = await self._pool.detect([d.text for d in docs], shares)
        spans = await off_loop_if_big(total, assign, docs, per_doc, len(texts))
        pending.discard("presidio")
        return spans, cpu

    async def _local(self, texts: list[str], selection: Selection, pending: set[str]
                     ) -> tuple[list[list[Span]], float]:
        if sum(len(t) for t in texts) <= INLINE_CHARS:
            return self._in_process(texts, selection, pending)
        # off the event loop: the loop keeps relaying streams meanwhile
        return await asyncio.to_thread(self._in_process, texts, selection, pending)

    def _in_process(self, texts: list[str], selection: Selection, pending: set[str]
                    ) -> tuple[list[list[Span]], float]:
        """The pattern tier, the gazetteer and plugins, in this process, each crossed off
        `pending` as it finishes; with the CPU time they took."""
        started = time.thread_time()
        found: list[list[Span]] = [[] for _ in texts]
        if "patterns" in selection.builtin:
            found = _run("patterns", lambda: batched(self._patterns.detect, texts))
            pending.discard("patterns")
        if "gazetteer" in selection.builtin:
            gazetteer = self._gazetteer
            if gazetteer is None:  # a policy never prepared: refuse, never skip
                log.error("detector_failed", detector="gazetteer", error_type="NotLoaded")
                raise DetectorFailed("gazetteer", "error")
            more = _run("gazetteer", lambda: [gazetteer.detect(t) for t in texts])
            found = [[*a, *b] for a, b in zip(found, more, strict=True)]
            pending.discard("gazetteer")
        for reference in selection.plugins:
            plugin = self._plugins[reference]
            more = _run(reference, lambda: [plugin.detect(t) for t in texts])  # noqa: B023
            found = [[*a, *b] for a, b in zip(found, more, strict=True)]
            pending.discard(reference)
        return found, time.thread_time() - started


def _run(detector: str, work: Callable[[], list[list[Span]]]) -> list[list[Span]]:
    """One detector over every text; any exception it raises becomes DetectorFailed naming
    it, logged by type only (its message may quote the text it was given)."""
    try:
        return work()
    except Exception as exc:
        log.error("detector_failed", detector=detector,  # noqa: TRY400
                  error_type=type(exc).__name__)
        raise DetectorFailed(detector, "error") from None


def _readings(texts: list[str]) -> list[Reading]:
    return [reading(t) for t in texts]


def _seen(span: Span, found: list[Span]) -> bool:
    return any(s.entity == span.entity and s.overlaps(span) for s in found)
