"""No input can stall the gateway: hostile prompts are analysed in bounded time while `/healthz`
keeps answering; a request past its detection time limit is refused; an NER worker killed
mid-request fails that request closed, `/readyz` says so, and the worker comes back."""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator

import httpx2 as httpx
import pytest

from gateway.app import GATEWAY
from tests.conftest import Demo
from tests.servers import TEST_KEY, UNLIMITED, ServerThread, demo_gateway

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
PATTERNS = {"version": 1, "name": "patterns", "detectors": {"builtin": ["patterns"]}}
NER = {"version": 1, "name": "ner", "detectors": {"builtin": ["patterns", "presidio"]}}


def chat(url: str, content: str, timeout: float = 120) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=timeout, json={
        "model": "test-model", "messages": [{"role": "user", "content": content}]})


class Prober:
    """Hits /healthz every 20 ms in the background; keeps the latencies."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                client.get(self.url + "/healthz")
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.02)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


HOSTILE = {
    "repeated pem headers": "-----BEGIN RSA PRIVATE KEY-----\n" * 10_000,  # 330 KB
    "password= chains": "password=" * 10_000,
    "jwt fragments": "eyJ" * 100_000,
    "openai key prefixes": "sk-" * 100_000,
    "name cues": "Dear " * 60_000,
}


@pytest.fixture(scope="module")
def patterns_gateway() -> Iterator[ServerThread]:
    from gateway.demo.upstream import build_demo_app  # noqa: PLC0415
    from tests.servers import UPSTREAM_SECRET  # noqa: PLC0415

    with ServerThread(build_demo_app(required_key=UPSTREAM_SECRET)) as demo, \
            demo_gateway(demo.url, policy=PATTERNS, default_rate_limit=UNLIMITED) as gateway:
        yield gateway


@pytest.mark.parametrize("prompt", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_prompts_do_not_stall_the_gateway(patterns_gateway: ServerThread,
                                                  prompt: str) -> None:
    with Prober(patterns_gateway.url) as prober:
        started = time.perf_counter()
        r = chat(patterns_gateway.url, prompt)
        elapsed = time.perf_counter() - started
    assert r.status_code == 200, r.text[:300]
    assert elapsed < 10, elapsed  # was 23 s for the PEM headers
    assert prober.latencies
    # /healthz kept answering meanwhile (the benchmark measures the 50 ms target; here a
    # generous bound that a blocked loop would blow by seconds: a request of several seconds
    # held on the loop. 1.0 s was exceeded, at 1.12 s, on a 2-core machine running 7 processes)
    assert max(prober.latencies) < 2.0, max(prober.latencies)


def test_a_chat_of_a_thousand_distinct_names_is_linear(patterns_gateway: ServerThread) -> None:
    def messages(n: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Dear Person{i:05d}, your order is ready."}
                for i in range(n)]

    def seconds(n: int) -> float:
        samples = []
        for _ in range(3):
            started = time.perf_counter()
            r = httpx.post(patterns_gateway.url + "/v1/chat/completions", headers=AUTH,
                           timeout=60, json={"model": "test-model", "messages": messages(n)})
            assert r.status_code == 200
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    small, large = seconds(1_000), seconds(2_000)
    assert large < 3 * small + 0.2, (small, large)  # was 3.4 s for 1,000, quadratic


@pytest.fixture(scope="module")
def ner_gateway() -> Iterator[ServerThread]:
    from gateway.demo.upstream import build_demo_app  # noqa: PLC0415
    from tests.servers import UPSTREAM_SECRET  # noqa: PLC0415

    policy = {**NER, "detectors": {**NER["detectors"], "time_limit_s": 3}}
    with ServerThread(build_demo_app(required_key=UPSTREAM_SECRET)) as demo, \
            demo_gateway(demo.url, policy=policy, default_rate_limit=UNLIMITED) as gateway:
        yield gateway


def ner_pids(gateway: ServerThread) -> list[int]:
    return gateway.app[GATEWAY].pipeline.inspector.engine._pool.pids


def test_detection_past_its_time_limit_is_refused_closed(ner_gateway: ServerThread,
                                                         demo: Demo) -> None:
    (pid,) = ner_pids(ner_gateway)
    started = time.perf_counter()
    r = chat(ner_gateway.url, "Angela Merkel visited Paris. " * 40_000)  # ~1.2 MB of names
    assert time.perf_counter() - started < 8
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "detection_timeout"
    assert "Merkel" not in r.text
    deadline = time.monotonic() + 60  # the worker busy with nobody's request is replaced
    while ner_pids(ner_gateway) in ([pid], []):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert chat(ner_gateway.url, "Angela Merkel visited Paris.").status_code == 200


def test_a_killed_ner_worker_fails_closed_and_comes_back(ner_gateway: ServerThread) -> None:
    url = ner_gateway.url
    assert chat(url, "Angela Merkel visited Paris.").status_code == 200
    (pid,) = ner_pids(ner_gateway)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while httpx.get(url + "/readyz").status_code == 200:  # not ready while none is alive
        assert time.monotonic() < deadline
        time.sleep(0.01)
    refused = chat(url, "Angela Merkel visited Paris.")
    if refused.status_code != 200:  # unless the replacement was already up
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "detector_failed"
    deadline = time.monotonic() + 60
    while httpx.get(url + "/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert chat(url, "Angela Merkel visited Paris.").status_code == 200
    metrics = httpx.get(url + "/metrics").text
    assert 'veil_ner_worker_restarts_total{reason="died"} 1.0' in metrics
