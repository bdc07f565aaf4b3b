"""Several encrypted queries packed into one ciphertext, side by side in one run.

1. Scoring throughput at 8 concurrent requests, K = 1,000, one query a request (a one-window
   prompt): the scoring part alone (encryption, the HTTP round trip to `veil scorer serve` with
   its default workers, one per core, the evaluation, decryption), without the embedder.
   Unpacked: one pass a query (fhe.batch_window_ms 0, max_batch 1: what the gateway did before
   packing). Packed: queries arriving within 2 ms share a pass, up to 8. Rounds alternate the
   two; medians of requests/s and the ratio. Target: packed >= 5x unpacked.
2. The scoring part alone of one long prompt (its windows, fhe.chunk_tokens: a one-sentence
   prompt is 1 window, 2 KB ~5, 20 KB ~45), unpacked and packed, medians: what packing does to
   the latency of a long prompt without the embedder's cost.
3. Added latency of a chat request with one semantic rule at K = 1,000 through the gateway
   (embedding included), for a one-sentence, a 2 KB and a 20 KB prompt, unpacked and packed
   (a long prompt's windows share passes), against the same gateway without the rule,
   interleaved, medians.

Run: .venv/bin/python tests/bench/fhe_packing.py [--scoring-only] [--rounds N]
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx2 as httpx
import numpy as np

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT))

from gateway.demo.upstream import build_demo_app  # noqa: E402
from gateway.fhe.batching import Batcher  # noqa: E402
from gateway.fhe.client import ScorerClient  # noqa: E402
from gateway.fhe.keys import KeyStore  # noqa: E402
from gateway.fhe.scoring import ModelFile, save_model  # noqa: E402
from gateway.observability.logging import configure_logging  # noqa: E402
from tests.bench.fhe_scoring import PROMPTS, SENTENCE, free_port  # noqa: E402
from tests.servers import (  # noqa: E402
    TEST_KEY,
    TEST_POLICY,
    UPSTREAM_SECRET,
    ServerThread,
    demo_backend,
    gateway_for,
    settings_for,
)

CONCURRENCY = 8
ROWS = 1000
MASTER_ENV = "VEIL_BENCH_FHE"


@contextmanager
def scorer_with_topics(tmp: Path) -> Iterator[str]:
    """`veil scorer serve` (default workers) with a K = 1,000 reference set; yields its URL."""
    (tmp / "models").mkdir()
    rng = np.random.default_rng(3)
    weights = rng.standard_normal((ROWS, 384))
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    labels = tuple(f"topic-{i % 10}" for i in range(ROWS))
    save_model(tmp / "models" / "topics.npz",
               ModelFile("topics", "reference_set", weights, labels, None, "max"))
    port = free_port()
    scorer = subprocess.Popen([sys.executable, "-m", "gateway", "scorer", "serve", "--models",
                               str(tmp / "models"), "--keys", str(tmp / "received"),
                               "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        scorer.send_signal(signal.SIGTERM)
        scorer.wait(timeout=20)


async def requests_per_second(client: ScorerClient, window_ms: float, limit: int,
                              seconds: float) -> float:
    """CONCURRENCY callers, each scoring one query after another for `seconds`."""

    async def one_pass(_: str, model: str, embeddings: list[Any]) -> list[dict[str, float]]:
        return await client.score_many(model, embeddings)

    batcher = Batcher(one_pass, window_ms / 1000, limit)
    rng = np.random.default_rng(11)
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            x = rng.standard_normal(384)
            await batcher.score("s", "topics", [x / np.linalg.norm(x)])
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*[caller() for _ in range(CONCURRENCY)])
    elapsed = time.perf_counter() - started
    await batcher.close()
    return done / elapsed


async def throughput(url: str, keys_dir: Path, rounds: int, seconds: float
                     ) -> dict[str, list[float]]:
    keys = KeyStore.open(str(keys_dir), MASTER_ENV, None).load()
    async with aiohttp.ClientSession(trust_env=False) as session:
        client = ScorerClient("s", url, keys, session, 60)
        x = np.ones(384) / np.sqrt(384)
        await client.score_many("topics", [x] * 8)  # keys sent, every packing warm
        await client.score("topics", x)
        results: dict[str, list[float]] = {"unpacked": [], "packed": []}
        for _ in range(rounds):
            results["unpacked"].append(await requests_per_second(client, 0, 1, seconds))
            results["packed"].append(await requests_per_second(client, 2, 8, seconds))
        return results


WINDOWS = {"one sentence": 1, "2 KB": 5, "20 KB": 45}


async def prompt_latency(url: str, keys_dir: Path, rounds: int) -> dict[str, tuple[float, float]]:
    """Per prompt size: median ms to score all its windows, unpacked and packed."""
    keys = KeyStore.open(str(keys_dir), MASTER_ENV, None).load()
    rng = np.random.default_rng(5)
    async with aiohttp.ClientSession(trust_env=False) as session:
        client = ScorerClient("s", url, keys, session, 120)

        async def one_pass(_: str, model: str, embeddings: list[Any]) -> list[dict[str, float]]:
            return await client.score_many(model, embeddings)

        unpacked, packed = Batcher(one_pass, 0, 1), Batcher(one_pass, 2 / 1000, 8)
        await packed.score("s", "topics", [np.ones(384) / np.sqrt(384)] * 8)
        medians = {}
        for name, windows in WINDOWS.items():
            samples: tuple[list[float], list[float]] = ([], [])
            for _ in range(rounds):
                xs = [x / np.linalg.norm(x) for x in rng.standard_normal((windows, 384))]
                for batcher, sample in zip((unpacked, packed), samples, strict=True):
                    started = time.perf_counter()
                    await batcher.score("s", "topics", xs)
                    sample.append((time.perf_counter() - started) * 1000)
            medians[name] = (statistics.median(samples[0]), statistics.median(samples[1]))
        return medians


def added_latency(url: str, keys_dir: Path) -> dict[str, tuple[float, float, float]]:
    fhe = {"keys_dir": str(keys_dir), "master_key_env": MASTER_ENV,
           "scorers": [{"name": "s", "url": url, "timeout_s": 60}]}
    rule = {"name": "t", "scorer": "s", "model": "topics", "label": "topic-3",
            "threshold": 0.99, "block": True}
    unlimited = {"requests_per_second": 1e6, "burst": 1_000_000}
    quiet = {"level": "warning"}
    with ServerThread(build_demo_app(required_key=UPSTREAM_SECRET)) as demo:
        backends = [demo_backend("d", demo.url)]
        plain = settings_for(backends, policy=TEST_POLICY, default_rate_limit=unlimited,
                             logging=quiet)

        def scored(**batching: float) -> Any:
            return settings_for(backends, policy={**TEST_POLICY, "semantic": [rule]},
                                fhe={**fhe, **batching}, default_rate_limit=unlimited,
                                logging=quiet)

        with gateway_for(plain) as a, gateway_for(scored(batch_window_ms=0, max_batch=1)) as b, \
                gateway_for(scored(batch_window_ms=2, max_batch=8)) as c, \
                httpx.Client() as http:
            def once(gateway: ServerThread, content: str) -> float:
                started = time.perf_counter()
                r = http.post(gateway.url + "/v1/chat/completions", timeout=120,
                              headers={"Authorization": f"Bearer {TEST_KEY}"}, json={
                                  "model": "test-model",
                                  "messages": [{"role": "user", "content": content}]})
                assert r.status_code == 200, r.text
                return (time.perf_counter() - started) * 1000

            once(b, SENTENCE)
            once(c, SENTENCE)
            medians = {}
            for name, (content, rounds) in PROMPTS.items():
                samples: tuple[list[float], ...] = ([], [], [])
                for _ in range(rounds):
                    for gateway, sample in zip((a, b, c), samples, strict=True):
                        sample.append(once(gateway, content))
                medians[name] = tuple(statistics.median(s) for s in samples)  # type: ignore[assignment]
    return medians


def main() -> None:
    configure_logging("warning", "console")
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 5
    tmp = Path(tempfile.mkdtemp(prefix="veil-fhe-packing-"))
    os.environ[MASTER_ENV] = "22" * 32
    KeyStore.open(str(tmp / "keys"), MASTER_ENV, None).init()
    with scorer_with_topics(tmp) as url:
        print(f"1. scoring throughput, {CONCURRENCY} concurrent requests of one query, "
              f"K = {ROWS:,}, scorer with {os.cpu_count()} workers ({rounds} rounds of 5 s)")
        results = asyncio.run(throughput(url, tmp / "keys", rounds, 5.0))
        unpacked, packed = (statistics.median(results[m]) for m in ("unpacked", "packed"))
        print(f"{'mode':>10} {'requests/s (median)':>20} {'rounds':>40}")
        for mode, value in (("unpacked", unpacked), ("packed", packed)):
            print(f"{mode:>10} {value:>20.1f} {' '.join(f'{v:.1f}' for v in results[mode]):>40}")
        print(f"{'ratio':>10} {packed / unpacked:>20.2f}   (target >= 5)")
        print(f"\n2. scoring one prompt's windows, K = {ROWS:,} (ms, medians of {rounds})")
        print(f"{'prompt':>14} {'windows':>8} {'unpacked':>9} {'packed':>9} {'ratio':>6}")
        for name, (off, on) in asyncio.run(prompt_latency(url, tmp / "keys", rounds)).items():
            print(f"{name:>14} {WINDOWS[name]:>8} {off:>9.1f} {on:>9.1f} {off / on:>6.2f}")
        if "--scoring-only" in sys.argv:
            return
        print(f"\n3. chat request through the gateway, K = {ROWS:,}, one semantic rule "
              "(ms, medians; added = with rule - without)")
        print(f"{'prompt':>14} {'without':>9} {'unpacked':>9} {'packed':>9} "
              f"{'added unpacked':>15} {'added packed':>13}")
        for name, (without, off, on) in added_latency(url, tmp / "keys").items():
            print(f"{name:>14} {without:>9.2f} {off:>9.2f} {on:>9.2f} "
                  f"{off - without:>15.2f} {on - without:>13.2f}")


if __name__ == "__main__":
    main()
