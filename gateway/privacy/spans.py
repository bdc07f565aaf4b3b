"""The detector contract: what a detector finds, and what a detector is.

A detector is `detect(text) -> list[Span]`: pure, synchronous, picklable, safe to run in a
worker process. Third-party plugins implement exactly this and nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    entity: str
    score: float
    detector: str

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"span [{self.start}, {self.end}) is empty or negative")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"span score {self.score} is outside [0, 1]")

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end


def non_overlapping(spans: Iterable[Span], length: int) -> list[Span]:
    """The spans, taken in the order given (priority first), that overlap none taken before;
    sorted by position. Marks covered positions in a bytearray, so that thousands of findings
    cost their total length, not their number squared."""
    covered = bytearray(length)
    kept: list[Span] = []
    for span in spans:
        end = min(span.end, length)
        if span.start >= end or covered.find(1, span.start, end) != -1:
            continue
        covered[span.start:end] = b"\x01" * (end - span.start)
        kept.append(span)
    kept.sort(key=lambda s: s.start)
    return kept


@runtime_checkable
class Detector(Protocol):
    name: str
    entities: frozenset[str]

    def detect(self, text: str) -> list[Span]: ...
