"""Placeholders for one request: one per distinct (entity, value), numbered per entity type in
order of first appearance across the whole conversation. Because numbering depends only on the
conversation, every turn of a chat maps the same value to the same placeholder with no state
kept between requests; the mapping lives only as long as this object, i.e. one request.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# <PERSON_1>, <CREDIT_CARD_12>, <EMPLOYEE_ID_3>: easy for a model to copy verbatim.
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*[A-Z0-9])_(\d{1,6})>")
MAX_PLACEHOLDER = 48


class Vault:
    __slots__ = ("_by_value", "_counts", "_values")

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._values: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        found = self._by_value.get(key)
        if found is None:
            number = self._counts[entity] = self._counts.get(entity, 0) + 1
            found = f"<{entity}_{number}>"
            self._by_value[key] = found
            self._values[found] = value
        return found

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
