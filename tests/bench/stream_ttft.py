"""Streaming through Veil with restore on, beside the same stream without Veil.

The demo model server paces its chunks (20 ms apart). Measured per request: time to the first
content token, and how chunk arrivals spread over the stream (a gateway that buffered would
deliver everything at the end). The prompt carries an email address, so the reply carries a
placeholder and restore is on. Two gateway configurations: the pattern tier only, and the
pattern tier plus NER (whose analysis of the prompt is part of the time to first token).

Run: .venv/bin/python tests/bench/stream_ttft.py [--requests 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from gateway.ingress.auth import hash_api_key

ROOT = Path(__file__).parents[2]
KEY = "veil-bench-key-0123456789"
EMAIL = "dana.whitfield@example.org"
COUNTER = iter(range(1_000_000))


def body() -> dict[str, object]:
    """A new prompt each time, so the detection cache does not answer for the NER."""
    return {"model": "m", "stream": True, "messages": [{
        "role": "user",
        "content": f"Please write to {EMAIL} about audit {next(COUNTER)} of Northwind."}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(directory: Path, name: str, upstream: str, port: int, detectors: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(f"""
listen: {{host: 127.0.0.1, port: {port}}}
default_rate_limit: {{requests_per_second: 100000, burst: 100000}}
tenants: {{t: {{}}}}
api_keys: [{{name: k, tenant: t, hash: "{hash_api_key(KEY)}"}}]
backends: [{{name: demo, url: "{upstream}"}}]
models: {{m: [demo]}}
policies: {{files: ["{path.with_suffix(".policy.yaml")}"], watch_interval_s: 0}}
""")
    path.with_suffix(".policy.yaml").write_text(
        f"version: 1\nname: bench\ndetectors: {{builtin: {detectors}}}\n")
    return path


async def one(session: aiohttp.ClientSession, url: str) -> tuple[float, list[float], str]:
    started = time.perf_counter()
    first = 0.0
    arrivals: list[float] = []
    text = []
    async with session.post(url + "/v1/chat/completions", json=body(),
                            headers={"Authorization": f"Bearer {KEY}"}) as r:
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            if delta:
                now = time.perf_counter() - started
                first = first or now
                arrivals.append(now)
                text.append(delta)
    return first * 1000, arrivals, "".join(text)


async def measure(url: str, requests: int) -> tuple[float, float, str]:
    async with aiohttp.ClientSession() as session:
        await one(session, url)  # warm-up
        results = [await one(session, url) for _ in range(requests)]
    ttft = statistics.median(r[0] for r in results)
    # fraction of the stream's duration already delivered when half the chunks had arrived
    spread = statistics.median(r[1][len(r[1]) // 2] / r[1][-1] for r in results)
    return ttft, spread, results[-1][2]


def wait_ready(url: str) -> None:
    import urllib.request  # noqa: PLC0415

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} not ready")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="veil-ttft-"))
    demo_port, fast_port, ner_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{demo_port}"
    veil = [sys.executable, "-m", "gateway"]
    processes = [subprocess.Popen([*veil, "demo-upstream", "--port", str(demo_port),
                                   "--chunk-delay-ms", "20"], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for name, port, detectors in (("fast", fast_port, "[patterns]"),
                                  ("ner", ner_port, "[patterns, presidio]")):
        processes.append(subprocess.Popen(
            [*veil, "serve", "--config", str(config(tmp, name, upstream, port, detectors))],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        wait_ready(upstream + "/v1/models")
        for port in (fast_port, ner_port):
            wait_ready(f"http://127.0.0.1:{port}/readyz")
        rows = {"direct (no Veil)": upstream,
                "veil, patterns, restore on": f"http://127.0.0.1:{fast_port}",
                "veil, patterns+NER, restore on": f"http://127.0.0.1:{ner_port}"}
        measured = {name: asyncio.run(measure(url, args.requests)) for name, url in rows.items()}
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)
    direct = measured["direct (no Veil)"][0]
    print(f"\n{args.requests} streamed chats each, chunks paced 20 ms apart, medians\n")
    print(f"{'path':<32}{'TTFT ms':>9}{'added ms':>10}{'half the chunks by':>20}  restored")
    for name, (ttft, spread, text) in measured.items():
        restored = "n/a" if name.startswith("direct") else ("yes" if EMAIL in text else "NO")
        print(f"{name:<32}{ttft:>9.2f}{ttft - direct:>+10.2f}{spread:>19.0%}   {restored}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
