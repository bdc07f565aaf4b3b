"""What the pattern tier finds in a text as the engine runs it: on the reading form, with the
spans mapped back onto the original characters."""

from __future__ import annotations

from gateway.privacy.normalize import reading
from gateway.privacy.patterns import PatternDetector
from gateway.privacy.spans import Span

detector = PatternDetector()


def read_and_detect(text: str) -> list[Span]:
    read = reading(text)
    return [read.original(s) for s in detector.detect(read.text)]


def found(text: str) -> list[tuple[str, str]]:
    """(the characters the client wrote, entity) for each finding."""
    return [(text[s.start:s.end], s.entity) for s in read_and_detect(text)]
