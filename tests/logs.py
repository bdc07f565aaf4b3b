"""How the suite logs: at debug (whatever the gateway logs at its most verbose is what tests
exercise), into the test's captured stderr, so `capsys` sees the gateway's log lines."""

from __future__ import annotations

import io
import sys
from typing import TextIO

from gateway.observability.logging import configure_logging


class CurrentStderr(io.TextIOBase):
    """The test's captured `sys.stderr` at each write (the gateway's loggers keep the stream
    they were made with); between tests, pytest's own capture."""

    def __init__(self) -> None:
        self._between_tests = sys.stderr

    def _target(self) -> TextIO:
        return self._between_tests if sys.stderr is sys.__stderr__ else sys.stderr

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()


_STREAM: CurrentStderr | None = None


def use_suite_logging() -> None:
    """Configure (or, after a test logged elsewhere, restore) the suite's logging."""
    global _STREAM  # noqa: PLW0603 (one stream for the session)
    if _STREAM is None:
        _STREAM = CurrentStderr()
    configure_logging("debug", "json", stream=_STREAM)
