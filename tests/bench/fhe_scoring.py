"""Encrypted scoring, side by side in one run.

1. Per query, one 384-dim embedding against K references: numpy (the floor), TenSEAL's built-in
   `matmul` (K <= 1000: it is slow, and wrong once 384 + K exceeds N/2), and Veil's scorer in a
   separate process (same as `veil scorer bench`). Targets: K=1,000 <= 40 ms, K=10,000 <= 300 ms,
   >= 20x faster than matmul.
2. Added latency of a chat request with one semantic rule at K=1,000 (embedding, encryption,
   the scorer round trip over HTTP, decryption), against the same gateway without the rule,
   interleaved, medians, for a one-sentence, a 2 KB and a 20 KB prompt (the whole prompt is
   scored, window by window: fhe.chunk_tokens), with each embedder (fhe.embedder: the static
   table, then MiniLM). Targets: <= 45 ms at 2 KB, <= 120 ms at 20 KB.

Run: .venv/bin/python tests/bench/fhe_scoring.py [--chat-only]
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT))

from gateway.demo.upstream import build_demo_app  # noqa: E402
from gateway.fhe.bench import run_bench  # noqa: E402
from gateway.fhe.keys import KeyStore  # noqa: E402
from gateway.fhe.scoring import ModelFile, save_model  # noqa: E402
from gateway.fhe.static_embed import NAME as STATIC  # noqa: E402
from gateway.observability.logging import configure_logging  # noqa: E402
from tests.servers import (  # noqa: E402
    TEST_KEY,
    TEST_POLICY,
    UPSTREAM_SECRET,
    ServerThread,
    demo_backend,
    gateway_for,
    settings_for,
)
from tests.static_table import static_table_dir  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SENTENCE = "Summarize the quarterly report for the board meeting."
PARAGRAPH = ("Revenue grew in every region this quarter, led by the services business; margins "
             "held despite higher freight costs, and the board will review the hiring plan. ")


def prompt_of(size: int) -> str:
    return (PARAGRAPH * (size // len(PARAGRAPH) + 1))[:size]


PROMPTS = {"one sentence": (SENTENCE, 40), "2 KB": (prompt_of(2_000), 20),
           "20 KB": (prompt_of(20_000), 5)}


def added_latency(embedder: str) -> dict[str, tuple[float, float]]:
    """`embedder`: fhe.embedder (the scorer's model is marked as built with it)."""
    tmp = Path(tempfile.mkdtemp(prefix="veil-fhe-bench-"))
    (tmp / "models").mkdir()
    rng = np.random.default_rng(3)
    weights = rng.standard_normal((1000, 384))
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    labels = tuple(f"topic-{i % 10}" for i in range(1000))
    save_model(tmp / "models" / "topics.npz",
               ModelFile("topics", "reference_set", weights, labels, None, "max",
                         STATIC if embedder == "static" else "minilm"))
    port = free_port()
    scorer = subprocess.Popen([sys.executable, "-m", "gateway", "scorer", "serve", "--models",
                               str(tmp / "models"), "--keys", str(tmp / "received"),
                               "--port", str(port), "--workers", "1"], cwd=ROOT)
    os.environ["VEIL_BENCH_FHE"] = "22" * 32
    KeyStore.open(str(tmp / "keys"), "VEIL_BENCH_FHE", None).init()
    fhe = {"keys_dir": str(tmp / "keys"), "master_key_env": "VEIL_BENCH_FHE",
           "scorers": [{"name": "s", "url": f"http://127.0.0.1:{port}", "timeout_s": 30}],
           "embedder": embedder, "embedder_cache_dir": static_table_dir()}
    rule = {"name": "t", "scorer": "s", "model": "topics", "label": "topic-3",
            "threshold": 0.99, "block": True}
    unlimited = {"requests_per_second": 1e6, "burst": 1_000_000}
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with ServerThread(build_demo_app(required_key=UPSTREAM_SECRET)) as demo:
            quiet = {"level": "warning"}
            plain = settings_for([demo_backend("d", demo.url)], policy=TEST_POLICY,
                                 default_rate_limit=unlimited, logging=quiet)
            scored = settings_for([demo_backend("d", demo.url)],
                                  policy={**TEST_POLICY, "semantic": [rule]}, fhe=fhe,
                                  default_rate_limit=unlimited, logging=quiet)
            with gateway_for(plain) as a, gateway_for(scored) as b, httpx.Client() as client:
                def once(url: str, content: str) -> float:
                    started = time.perf_counter()
                    r = client.post(url + "/v1/chat/completions", timeout=60,
                                    headers={"Authorization": f"Bearer {TEST_KEY}"}, json={
                                        "model": "test-model", "messages": [
                                            {"role": "user", "content": content}]})
                    assert r.status_code == 200, r.text
                    return (time.perf_counter() - started) * 1000

                once(b.url, SENTENCE)  # warm: keys sent, workers compiled
                medians = {}
                for name, (content, rounds) in PROMPTS.items():
                    without, with_rule = [], []
                    for _ in range(rounds):
                        without.append(once(a.url, content))
                        with_rule.append(once(b.url, content))
                    medians[name] = statistics.median(without), statistics.median(with_rule)
        return medians
    finally:
        scorer.send_signal(signal.SIGTERM)
        scorer.wait(timeout=20)


def main() -> None:
    configure_logging("warning", "console")
    if "--chat-only" not in sys.argv:
        print("1. scoring one query against K rows (ms, medians)")
        run_bench([10, 100, 1000], compare_matmul=True)
        run_bench([10_000], compare_matmul=False)
    print("\n2. chat request through the gateway, K = 1,000, one semantic rule (ms, medians)")
    print(f"{'embedder':>8} {'prompt':>14} {'without rule':>14} {'with rule':>10} {'added':>8}")
    for embedder in ("static", "minilm"):
        for name, (without, with_rule) in added_latency(embedder).items():
            print(f"{embedder:>8} {name:>14} {without:>14.2f} {with_rule:>10.2f} "
                  f"{with_rule - without:>8.2f}")


if __name__ == "__main__":
    main()
