"""An example third-party detector for Veil.

The whole contract: a class with `name`, `entities` and `detect(text)` returning objects with
`start`, `end`, `entity`, `score`, `detector` (Veil's `Span` has exactly these fields; a plain
tuple-like dataclass works too). Pure and synchronous, so Veil may run it in a worker process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PATTERN = re.compile(r"\bEMP-(\d{6})-(\d)\b")


@dataclass(frozen=True)
class Finding:
    start: int
    end: int
    entity: str
    score: float
    detector: str


def check_digit(digits: str) -> int:
    """Luhn check digit of the six-digit serial."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10


class EmployeeIdDetector:
    name = "employee_id"
    entities = frozenset({"EMPLOYEE_ID"})

    def detect(self, text: str) -> list[Finding]:
        return [Finding(m.start(), m.end(), "EMPLOYEE_ID", 1.0, self.name)
                for m in PATTERN.finditer(text) if int(m.group(2)) == check_digit(m.group(1))]
