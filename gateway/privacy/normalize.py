"""What detectors read: the text as a reader sees it, not as it is encoded.

An address written `john\u200b@example.com`, full-width `john\uff20example.com`,
`john%40example.com` or `john&#64;example.com` reads as an address to the model, so detectors
must see one. The text is rewritten into a reading form: invisible format characters and soft
hyphens dropped, every kind of space a space, NFKC compatibility forms folded (full-width
letters and digits, ligatures), percent-escapes and numeric character references of printable
ASCII decoded. Each span found there is mapped back to the characters of the original it came
from, so the masker replaces exactly what the client sent, evasion characters included.

Linear in the text; a text that needs none of this (most ASCII) costs one C-speed scan.
"""

from __future__ import annotations

import bisect
import re
import sys
import unicodedata
from dataclasses import dataclass

from gateway.privacy.spans import Span


def _invisible() -> frozenset[str]:
    """Every format character (category Cf: zero-width space and joiners, word joiner, BOM,
    soft hyphen, bidi controls, tag characters), variation selectors and the combining
    grapheme joiner: characters that change no reading of the text."""
    planes = (*range(0x20000), *range(0xE0000, 0xE0200))  # where Unicode puts them
    return frozenset(chr(c) for c in planes
                     if unicodedata.category(chr(c)) == "Cf" or 0xFE00 <= c <= 0xFE0F
                     or 0xE0100 <= c <= 0xE01EF or c == 0x034F)


INVISIBLE = _invisible()
SPACES = frozenset(chr(c) for c in range(0x10000)
                   if unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp") and c != 0x20)
# What may need rewriting: any non-ASCII run, a percent-escape, a numeric character reference.
SPECIAL = re.compile(r"[^\x00-\x7f]+|%[0-9A-Fa-f]{2}|&#(?:[0-9]{1,7}|[xX][0-9A-Fa-f]{1,6});")


def _char_class(chars: frozenset[str]) -> str:
    """A character class of ranges (a class of hundreds of single characters, astral ones
    among them, makes the regex engine slow on every character it tries)."""
    codes = sorted(ord(ch) for ch in chars)
    ranges: list[tuple[int, int]] = []
    for code in codes:
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in ranges)


NEEDS_WORK = re.compile(
    f"[{_char_class(INVISIBLE)}{_char_class(SPACES)}]|%[0-9A-Fa-f]{{2}}|&#")


@dataclass(frozen=True, slots=True)
class Reading:
    """A text in reading form, and where each of its characters came from in the original.
    `edits` holds (position in the reading, position in the original, original length,
    reading length) for each rewritten piece, in order."""

    text: str
    edits: tuple[tuple[int, int, int, int], ...] = ()
    starts: tuple[int, ...] = ()  # each edit's position in the reading, for bisect

    def original(self, span: Span) -> Span:
        """The span over the original characters its reading characters came from."""
        if not self.edits:
            return span
        start = self._start(span.start)
        end = self._end(span.end)
        return Span(start, max(end, start + 1), span.entity, span.score, span.detector)

    def _start(self, at: int) -> int:
        i = bisect.bisect_right(self.starts, at) - 1
        if i < 0:
            return at
        read_at, orig_at, orig_len, read_len = self.edits[i]
        if at < read_at + read_len:
            return orig_at  # inside a rewritten piece: from its start
        return orig_at + orig_len + (at - read_at - read_len)

    def _end(self, at: int) -> int:
        i = bisect.bisect_left(self.starts, at) - 1
        if i < 0:
            return at
        read_at, orig_at, orig_len, read_len = self.edits[i]
        if at <= read_at + read_len:
            return orig_at + orig_len  # inside or at the end of a rewritten piece: to its end
        return orig_at + orig_len + (at - read_at - read_len)


def reading(text: str) -> Reading:
    """The reading form of `text` (the text itself when nothing needs rewriting)."""
    if (text.isascii() and "%" not in text and "&#" not in text) or (
            unicodedata.is_normalized("NFKC", text) and NEEDS_WORK.search(text) is None):
        return Reading(text)
    pieces: list[str] = []
    edits: list[tuple[int, int, int, int]] = []
    copied = 0  # original characters up to here are in `pieces`
    length = 0  # characters in `pieces`
    for m in SPECIAL.finditer(text):
        for at, size, replacement in _rewrites(m):
            if copied < at:
                pieces.append(text[copied:at])
                length += at - copied
            edits.append((length, at, size, len(replacement)))
            pieces.append(replacement)
            length += len(replacement)
            copied = at + size
    pieces.append(text[copied:])
    return Reading("".join(pieces), tuple(edits), tuple(edit[0] for edit in edits))


def _rewrites(m: re.Match[str]) -> list[tuple[int, int, str]]:
    """(original position, original length, replacement) for each piece of one match that
    reads differently from how it is written."""
    piece = m.group()
    if piece[0] == "%":
        ch = chr(int(piece[1:], 16))
        return [(m.start(), 3, ch)] if " " <= ch <= "~" else []
    if piece[0] == "&" and piece.startswith("&#"):
        number = piece[2:-1]
        code = int(number[1:], 16) if number[:1] in "xX" else int(number)
        ch = chr(code) if code <= sys.maxunicode else ""
        return [(m.start(), len(piece), ch)] if " " <= ch <= "~" or ch == "@" else []
    if unicodedata.is_normalized("NFKC", piece) and not any(
            ch in INVISIBLE or ch in SPACES for ch in piece):
        return []
    found = []
    for i, ch in enumerate(piece):
        if ch in INVISIBLE:
            found.append((m.start() + i, 1, ""))
        elif ch in SPACES:
            found.append((m.start() + i, 1, "\n" if ch in "\u2028\u2029" else " "))
        else:
            folded = unicodedata.normalize("NFKC", ch)
            if folded != ch:
                found.append((m.start() + i, 1, folded))
    return found
