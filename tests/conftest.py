from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gateway.demo.upstream import DEMO, DemoState, build_demo_app
from tests.logs import use_suite_logging
from tests.servers import UPSTREAM_SECRET, ServerThread, demo_backend, gateway_for, settings_for
from tests.softhsm import SoftHsm


@pytest.fixture(scope="session", autouse=True)
def _debug_logging() -> None:
    # Tests run at DEBUG: whatever the gateway logs at its most verbose is what tests exercise.
    use_suite_logging()
    for noisy in ("httpcore", "httpcore2", "httpx", "httpx2", "openai", "anthropic", "selenium",
                  "urllib3"):
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


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """The suite's SoftHSM2 token (one per process: see tests/softhsm.py)."""
    return SoftHsm(tmp_path_factory.mktemp("softhsm"))
