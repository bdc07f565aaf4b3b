"""Placeholders for one request: one per distinct (entity, value), numbered per entity type in
order of first appearance across the whole conversation. Because numbering depends only on the
conversation, every turn of a chat maps the same value to the same placeholder with no state
kept between requests; the mapping lives only as long as this object, i.e. one request (or,
for a stored response, as long as the encrypted copy in `StoredResponses`).

A placeholder never collides with text the client wrote: placeholder-shaped text found in the
request (`<EMAIL_1>` typed into a template) is *reserved*, and numbering skips it, so the
client's own `<EMAIL_1>` stays the client's text on the way back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

# <PERSON_1>, <CREDIT_CARD_12>, <EMPLOYEE_ID_3>: easy for a model to copy verbatim.
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*[A-Z0-9])_(\d{1,6})>")
MAX_PLACEHOLDER = 48

Entry = tuple[str, str, str]  # (placeholder, entity, value)


def reserved_in(texts: Iterable[str]) -> frozenset[str]:
    """Placeholder-shaped text the client wrote itself."""
    return frozenset(m.group(0) for text in texts if "<" in text
                     for m in PLACEHOLDER.finditer(text))


class Vault:
    __slots__ = ("_by_value", "_counts", "_reserved", "_values")

    def __init__(self, reserved: frozenset[str] = frozenset(),
                 entries: Iterable[Entry] = ()) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._values: dict[str, str] = {}
        self._counts: dict[str, int] = {}
        self._reserved = reserved
        for placeholder, entity, value in entries:
            self._add(placeholder, entity, value)

    def _add(self, placeholder: str, entity: str, value: str) -> None:
        self._by_value[(entity, value)] = placeholder
        self._values[placeholder] = value
        match = PLACEHOLDER.fullmatch(placeholder)
        number = int(match.group(2)) if match else 0
        self._counts[entity] = max(self._counts.get(entity, 0), number)

    def placeholder(self, entity: str, value: str) -> str:
        found = self._by_value.get((entity, value))
        if found is None:
            number = self._counts.get(entity, 0) + 1
            while f"<{entity}_{number}>" in self._reserved:
                number += 1
            found = f"<{entity}_{number}>"
            self._add(found, entity, value)
        return found

    def entries(self) -> list[Entry]:
        """Everything this vault maps, for keeping it with a stored response."""
        return [(placeholder, entity, value)
                for (entity, value), placeholder in self._by_value.items()]

    def __len__(self) -> int:
        return len(self._values)

    def restore(self, text: str, escape: Callable[[str], str] | None = None) -> str:
        """Replace this request's placeholders, exactly (case-sensitive); leave anything else,
        including placeholder-shaped text this request did not create, untouched."""
        if "<" not in text or not self._values:
            return text

        def swap(match: re.Match[str]) -> str:
            value = self._values.get(match.group(0))
            if value is None:
                return match.group(0)
            return escape(value) if escape else value

        return PLACEHOLDER.sub(swap, text)
