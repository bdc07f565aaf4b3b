"""Placeholders for one request: one per distinct (entity, value), numbered per entity type in
order of first appearance across the whole conversation. Because numbering depends only on the
conversation, every turn of a chat maps the same value to the same placeholder with no state
kept between requests; the mapping lives only as long as this object, i.e. one request (or,
for a stored response, as long as the encrypted copy in `StoredResponses`).

A placeholder never collides with text the client wrote: placeholder-shaped text found in the
request (`<EMAIL_1>` typed into a template) is *reserved*, and numbering skips it, so the
client's own `<EMAIL_1>` stays the client's text on the way back.

*Keyed* placeholders (`<PERSON_3f9a0c2e71bd>`, with a per-tenant key) are for requests whose
replies carry no text to restore, embeddings: numbered ones would give John in one request and
Alice in the next the same `<PERSON_1>`, hence the same vector, and retrieval could no longer
tell them apart. A keyed one is the same for the same value in every request, replica and
restart (so a stored document and a later query about the same person still match) and
different for different values; the model learns which values are equal, never what they are.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable, Iterable

# <PERSON_1>, <CREDIT_CARD_12>, <EMPLOYEE_ID_3>: easy for a model to copy verbatim; keyed ones
# carry 12 hex digits (the whole digest, 64, after a collision).
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*[A-Z0-9])_(\d{1,6}|[0-9a-f]{12}(?:[0-9a-f]{52})?)>")
MAX_PLACEHOLDER = 48

Entry = tuple[str, str, str]  # (placeholder, entity, value)
KEYED_DIGITS = 12  # hex digits: 48 bits, a collision once in ~16 million distinct values
WHITESPACE = re.compile(r"\s+")


def reserved_in(texts: Iterable[str]) -> frozenset[str]:
    """Placeholder-shaped text the client wrote itself."""
    return frozenset(m.group(0) for text in texts if "<" in text
                     for m in PLACEHOLDER.finditer(text))


def _folded(value: str) -> str:
    return WHITESPACE.sub(" ", unicodedata.normalize("NFKC", value)).strip().casefold()


class Vault:
    __slots__ = ("_by_value", "_counts", "_key", "_reserved", "_values")

    def __init__(self, reserved: frozenset[str] = frozenset(),
                 entries: Iterable[Entry] = (), key: bytes | None = None) -> None:
        """`key`: placeholders keyed by it (see the module docstring) instead of numbered."""
        self._by_value: dict[tuple[str, str], str] = {}
        self._values: dict[str, str] = {}
        self._counts: dict[str, int] = {}
        self._reserved = reserved
        self._key = key
        for placeholder, entity, value in entries:
            self._add(placeholder, entity, value)

    def _add(self, placeholder: str, entity: str, value: str) -> None:
        self._by_value[(entity, value)] = placeholder
        self._values[placeholder] = value
        match = PLACEHOLDER.fullmatch(placeholder)
        number = int(match.group(2)) if match and match.group(2).isdigit() and \
            len(match.group(2)) <= 6 else 0
        self._counts[entity] = max(self._counts.get(entity, 0), number)

    def placeholder(self, entity: str, value: str) -> str:
        found = self._by_value.get((entity, value))
        if found is None:
            found = self._keyed(entity, value) if self._key else self._numbered(entity)
            self._add(found, entity, value)
        return found

    def _numbered(self, entity: str) -> str:
        number = self._counts.get(entity, 0) + 1
        while f"<{entity}_{number}>" in self._reserved:
            number += 1
        return f"<{entity}_{number}>"

    def _keyed(self, entity: str, value: str) -> str:
        """The same for a value however it is cased or spaced ("John  Smith", "JOHN SMITH"),
        as a query about a person must match the document that names them. Two values whose
        digests agree in this request (never seen in practice) get the whole digest."""
        assert self._key is not None  # noqa: S101 (only called when keyed)
        folded = _folded(value)
        digest = hmac.new(self._key, f"{entity}\0{folded}".encode(),
                          hashlib.sha256).hexdigest()
        placeholder = f"<{entity}_{digest[:KEYED_DIGITS]}>"
        taken = self._values.get(placeholder)
        if taken is not None and _folded(taken) != folded:
            placeholder = f"<{entity}_{digest}>"
        return placeholder

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
