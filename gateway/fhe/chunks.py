"""Cutting a prompt into the embedder's token windows, so that the whole prompt is scored and
not only its beginning. Windows overlap, so that a sentence on a border is seen whole in one of
them, and the last window ends at the text's end (it is as full as the others: protected text at
the end is not diluted in a short tail, nor in a window of filler).

The bound on windows is checked before any is embedded: past it the request is refused (the
policy's `fail_mode.scorer`), never scored on a part of itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.errors import TooManyChunks


@dataclass(frozen=True)
class Windows:
    """`size` tokens a window (without [CLS]/[SEP]), `overlap` shared by neighbours."""

    size: int
    overlap: int
    limit: int

    def count(self, tokens: int) -> int:
        if tokens <= self.size:
            return 1
        return math.ceil((tokens - self.size) / (self.size - self.overlap)) + 1

    def spans(self, tokens: int) -> list[tuple[int, int]]:
        """[start, end) token ranges covering 0..tokens; raises TooManyChunks past `limit`."""
        count = self.count(tokens)
        if count > self.limit:
            raise TooManyChunks(count, self.limit)
        if count == 1:
            return [(0, tokens)]
        stride = self.size - self.overlap
        starts = [i * stride for i in range(count - 1)] + [tokens - self.size]
        return [(start, start + self.size) for start in starts]
