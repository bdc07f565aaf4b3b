"""Streaming restore: text arrives in arbitrary pieces; emit as much as can be final and hold
back only a tail that could still grow into a placeholder (at most `MAX_PLACEHOLDER` chars from
the last '<'). Concatenating what is emitted, plus `flush()`, equals restoring the whole text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from gateway.privacy.vault import MAX_PLACEHOLDER, Vault

PARTIAL = re.compile(r"<(?:[A-Z][A-Z0-9_]*(?:_\d{0,6})?)?\Z")


def json_escape(value: str) -> str:
    """For text that is JSON source (tool-call arguments): the value goes inside a string."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


class StreamRestorer:
    __slots__ = ("_buffer", "_escape", "_vault")

    def __init__(self, vault: Vault, escape: Callable[[str], str] | None = None) -> None:
        self._vault = vault
        self._escape = escape
        self._buffer = ""

    def feed(self, piece: str) -> str:
        buffer = self._buffer + piece
        cut = buffer.rfind("<")
        if cut == -1 or len(buffer) - cut > MAX_PLACEHOLDER or not PARTIAL.match(buffer, cut):
            cut = len(buffer)
        self._buffer = buffer[cut:]
        return self._vault.restore(buffer[:cut], self._escape)

    def flush(self) -> str:
        rest, self._buffer = self._buffer, ""
        return self._vault.restore(rest, self._escape)

    @property
    def holding(self) -> bool:
        return bool(self._buffer)
