"""A text lower-cased and its words, computed once per text however many pattern families
ask: a family looks for a naming word or a cue only when the text has its first word, which
spares most of the `str.find` scans on a text that has none of them."""

from __future__ import annotations

import re
from functools import lru_cache

LETTER_RUN = re.compile(r"[^\W\d_]+")


@lru_cache(maxsize=8)
def lowered(text: str) -> str:
    """The same string object for every family, so it is lowered and hashed once."""
    return text.lower()


@lru_cache(maxsize=8)
def letter_words(lowered: str) -> frozenset[str]:
    return frozenset(LETTER_RUN.findall(lowered))


@lru_cache(maxsize=1024)
def _first_word(phrase: str) -> str:
    first = LETTER_RUN.match(phrase)
    return first.group() if first else ""


def lacks_first_word(lowered: str, phrase: str) -> bool:
    """Whether the text cannot contain `phrase` as words: its first word is not in the text
    (a phrase that starts with no letter, such as "#", is never ruled out)."""
    first = _first_word(phrase)
    return bool(first) and first not in letter_words(lowered)
