"""How a request's texts become documents for a detector, and spans come back to their text.

A request's JSON carries many tiny strings (schema keys, tool-result fields), and a detector
call has a cost however short its text (a Presidio call about 2 ms): short texts are joined
into documents of about `BATCH_CHARS`, and spans are clipped back to the text they fall in (a
span across the separator into the next text is cut in two). A text longer than `chunk` (NER
only: spaCy refuses 1,000,000 characters and slows with length) becomes overlapping windows cut
at whitespace, each with context on both sides; each keeps the spans that start in its own part,
so a span across a cut is found by the window it starts in, whole, and once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.privacy.spans import Span

BATCH_CHARS = 2000
SEPARATOR = "\n\n"
CHUNK_CHARS = 100_000
CHUNK_OVERLAP = 200  # longer than any name, place or organisation, and their context


@dataclass(frozen=True, slots=True)
class Part:
    """Where text `index` sits in a document: positions [start, end), text offset `offset` at
    `start`. `clip`: spans are cut to the part (joined texts); otherwise a span belongs here
    if it starts here, and may run on into the overlap (chunks)."""

    index: int
    start: int
    end: int
    offset: int
    clip: bool


@dataclass(frozen=True, slots=True)
class Document:
    text: str
    parts: tuple[Part, ...]


def documents(texts: Sequence[str], chunk: int | None = None,
              batch: int = BATCH_CHARS) -> list[Document]:
    """Short texts joined up to `batch` characters, texts longer than `chunk` windowed."""
    out: list[Document] = []
    group: list[int] = []
    size = 0

    def flush() -> None:
        nonlocal group, size
        if group:
            out.append(_joined(texts, group))
        group, size = [], 0

    for i, text in enumerate(texts):
        if not text.strip():
            continue
        if chunk is not None and len(text) > chunk:
            out.extend(_windows(i, text, chunk))
        elif len(text) >= batch:
            out.append(Document(text, (Part(i, 0, len(text), 0, clip=True),)))
        else:
            if size + len(text) > batch:
                flush()
            group.append(i)
            size += len(text) + len(SEPARATOR)
    flush()
    return out


def _joined(texts: Sequence[str], group: list[int]) -> Document:
    parts, at = [], 0
    for i in group:
        parts.append(Part(i, at, at + len(texts[i]), 0, clip=True))
        at += len(texts[i]) + len(SEPARATOR)
    return Document(SEPARATOR.join(texts[i] for i in group), tuple(parts))


def _windows(index: int, text: str, chunk: int) -> list[Document]:
    out = []
    own = 0
    while own < len(text):
        own_end = min(len(text), own + chunk)
        if own_end < len(text):
            cut = text.rfind(" ", own + chunk // 2, own_end)
            own_end = cut if cut > own else own_end
        # Context on both sides: an entity across either cut is seen whole, and kept by the
        # window whose own part it starts in.
        window_start = max(0, own - CHUNK_OVERLAP)
        window_end = min(len(text), own_end + CHUNK_OVERLAP)
        out.append(Document(text[window_start:window_end],
                            (Part(index, own - window_start, own_end - window_start, own,
                                  clip=False),)))
        own = own_end
    return out


def assign(docs: Sequence[Document], found: Sequence[Sequence[Span]],
           count: int) -> list[list[Span]]:
    """Spans per text, from spans per document."""
    spans: list[list[Span]] = [[] for _ in range(count)]
    for doc, doc_spans in zip(docs, found, strict=True):
        for span in doc_spans:
            for part in doc.parts:
                if part.clip:
                    lo, hi = max(span.start, part.start), min(span.end, part.end)
                    if lo >= hi or not doc.text[lo:hi].strip():
                        continue
                elif not part.start <= span.start < part.end:
                    continue
                else:
                    lo, hi = span.start, span.end
                shift = part.offset - part.start
                spans[part.index].append(Span(lo + shift, hi + shift, span.entity, span.score,
                                              span.detector))
    for per_text in spans:
        per_text.sort(key=lambda s: s.start)
    return spans


def batched(detect: Callable[[str], list[Span]], texts: Sequence[str],
            chunk: int | None = None) -> list[list[Span]]:
    """`detect` over every text, one call per document."""
    docs = documents(texts, chunk)
    return assign(docs, [detect(doc.text) for doc in docs], len(texts))


def batched_many(detect_many: Callable[[Sequence[str]], list[list[Span]]],
                 texts: Sequence[str], chunk: int | None = None) -> list[list[Span]]:
    """`detect_many` over every document at once (spaCy's `pipe`)."""
    docs = documents(texts, chunk)
    return assign(docs, detect_many([doc.text for doc in docs]), len(texts))
