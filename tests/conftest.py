from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from typing import TextIO

import pytest

from gateway.demo.upstream import DEMO, DemoState, build_demo_app
from gateway.observability.logging import configure_logging
from tests.servers import UPSTREAM_SECRET, ServerThread, demo_backend, gateway_for, settings_for


class CurrentStderr(io.TextIOBase):
    """The test's captured `sys.stderr` at each write, so `capsys` sees the gateway's log lines
    (its loggers keep the stream they were made with); between tests, pytest's own capture."""

    def __init__(self) -> None:
        self._between_tests = sys.stderr

    def _target(self) -> TextIO:
        return self._between_tests if sys.stderr is sys.__stderr__ else sys.stderr

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()


@pytest.fixture(scope="session", autouse=True)
def _debug_logging() -> None:
    # Tests run at DEBUG: whatever the gateway logs at its most verbose is what tests exercise.
    configure_logging("debug", "json", stream=CurrentStderr())
    for noisy in ("httpcore", "httpcore2", "httpx", "httpx2", "openai", "anthropic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # the SDKs' own client chatter


class Demo:
    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.url = server.url

    @property
    def state(self) -> DemoState:
        return self.server.app[DEMO]


@pytest.fixture
def demo() -> Iterator[Demo]:
    with ServerThread(build_demo_app(required_key=UPSTREAM_SECRET)) as server:
        yield Demo(server)


@pytest.fixture
def gateway(demo: Demo) -> Iterator[ServerThread]:
    """The gateway in front of the demo server, which demands the gateway's own credential."""
    settings = settings_for([demo_backend("demo-openai", demo.url),
                             demo_backend("demo-anthropic", demo.url, "anthropic")])
    with gateway_for(settings) as server:
        yield server
