"""Concurrent requests packed into shared encrypted passes, through the real gateway and the
real `veil scorer serve`: prompts that differ, sent at once with the official SDK, each get
their own decision (deal talk blocked, the rest forwarded), and the scorer saw packed
ciphertexts; a failed batched pass fails every request in it closed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.fhe.keys import KeyStore
from tests.conftest import Demo
from tests.integration.test_fhe_scoring import (
    MASTER_HEX,
    POLICY,
    Recorder,
    free_port,
    running_scorer,
)
from tests.servers import TEST_KEY, ServerThread, demo_backend, gateway_for, settings_for

DEALS = ["Can you draft a term sheet for acquiring Globex Corp?",
         "What price per share should we offer in the merger with Initech?",
         "Summarize the due diligence findings on the takeover target"]
OTHERS = ["What is a good recipe for sourdough bread?",
          "Tell me about the history of Rome",
          "How do I change a bicycle tyre?",
          "Write a haiku about autumn leaves",
          "Explain how photosynthesis works"]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_scorer(tmp_path_factory.mktemp("scorer")) as url:
        yield url


def fhe_settings(tmp_path: Path, url: str) -> dict[str, object]:
    os.environ["VEIL_TEST_FHE_MASTER"] = MASTER_HEX
    KeyStore.open(str(tmp_path / "keys"), "VEIL_TEST_FHE_MASTER", None).init()
    # a window long enough that requests sent together always share a pass
    return {"keys_dir": str(tmp_path / "keys"), "master_key_env": "VEIL_TEST_FHE_MASTER",
            "scorers": [{"name": "vendor", "url": url, "timeout_s": 30}],
            "batch_window_ms": 50, "max_batch": 8}


async def send_all(url: str, prompts: list[str]) -> list[BaseException | object]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=TEST_KEY, max_retries=0)
    async with client:
        return await asyncio.gather(*[client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": prompt}])
            for prompt in prompts], return_exceptions=True)


def test_concurrent_requests_share_passes_and_each_gets_its_own_decision(
        scorer: str, demo: Demo, tmp_path: Path) -> None:
    recorder = Recorder(scorer)
    prompts = [DEALS[0], OTHERS[0], OTHERS[1], DEALS[1], OTHERS[2], OTHERS[3], DEALS[2],
               OTHERS[4]]
    with ServerThread(recorder.app()) as proxy:
        settings = settings_for([demo_backend("d", demo.url)], policy=POLICY,
                                fhe=fhe_settings(tmp_path, proxy.url))
        with gateway_for(settings) as gw:
            for _ in range(2):  # the first round also sends the keys
                results = asyncio.run(send_all(gw.url, prompts))
                for prompt, result in zip(prompts, results, strict=True):
                    if prompt in DEALS:
                        assert isinstance(result, openai.BadRequestError), (prompt, result)
                        assert "semantic.no-deals" in str(result.message)
                    else:
                        assert not isinstance(result, BaseException), (prompt, result)
    assert any(int(q) > 1 for q in recorder.packings), recorder.packings
    assert len(recorder.packings) < 2 * len(prompts)  # fewer passes than queries


def test_a_failed_batched_pass_fails_every_request_in_it_closed(demo: Demo,
                                                                 tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every pass fails
    settings = settings_for([demo_backend("d", demo.url)], policy=POLICY,
                            fhe=fhe_settings(tmp_path, dead))
    with gateway_for(settings) as gw:
        results = asyncio.run(send_all(gw.url, DEALS + OTHERS))
    for result in results:
        assert isinstance(result, openai.InternalServerError), result
        assert result.status_code == 503
        assert result.body["code"] == "scorer_failed", result.body  # type: ignore[index]
    assert demo.state.last_body is None
