"""What the shared store costs, with wrk on loopback, side by side in one run: `veil serve`
with rate limits in memory and with them in a local Redis (Debian's redis-server, started
here), each with one worker and with two. Targets (issue 17): shared limits add at most 0.5 ms
p50 per request; two workers give at least 1.6x one, with and without Redis.

The upstream is a bare asyncio protocol answering a fixed reply (`--upstream aiohttp`: the
aiohttp one `proxy_overhead.py` uses). On two cores wrk, the upstream and Redis share the CPU
the gateway's second worker needs, so the cheaper the upstream, the more of the scaling
measured is the gateway's own.

Run: `.venv/bin/python tests/bench/shared_state.py` (needs wrk and redis-server).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from proxy_overhead import BODY, KEY, UPSTREAM, free_port, start, veil_config, wait_ready, wrk

TARGETS = ("memory w1", "redis w1", "memory w2", "redis w2")
RAW_UPSTREAM = '''
import asyncio, json, sys, uvloop
BODY = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "bench",
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "ok " * 40}}],
                   "usage": {"prompt_tokens": 20, "completion_tokens": 40,
                             "total_tokens": 60}}).encode()
REPLY = (b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: "
         + str(len(BODY)).encode() + b"\\r\\n\\r\\n" + BODY)
class Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\\r\\n\\r\\n")) >= 0:
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:].split(b"\\r\\n", 1)[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(REPLY)
async def main():
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1",
                                                           int(sys.argv[1]))
    await server.serve_forever()
uvloop.run(main())
'''


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--upstream", choices=("raw", "aiohttp"), default="raw")
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "redis-server") if not shutil.which(tool)]
    if missing:
        print(f"not installed: {', '.join(missing)} (apt-get install wrk redis-server)",
              file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="veil-bench-state-"))
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n'
                      f'wrk.headers["Authorization"] = "Bearer {KEY}"\n')
    upstream_port, redis_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    processes = [start(RAW_UPSTREAM if args.upstream == "raw" else UPSTREAM, str(upstream_port)),
                 subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind",
                                   "127.0.0.1", "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    urls = {}
    for target in TARGETS:
        port = free_port()
        directory = tmp / target.replace(" ", "-")
        directory.mkdir()
        config = veil_config(directory, upstream, port)
        if target.startswith("redis"):
            config.write_text(config.read_text() +
                              f'state: {{redis_url: "redis://127.0.0.1:{redis_port}/0"}}\n')
        workers = target[-1]
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers",
             workers], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls[target] = f"http://127.0.0.1:{port}"
    try:
        for url in urls.values():
            wait_ready(url)
        results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for connections in (1, 32):
            for url in urls.values():
                wrk(url, connections, 1, script)  # warm-up
            for _ in range(args.rounds):
                for target, url in urls.items():
                    results.setdefault((target, connections), []).append(
                        wrk(url, connections, args.seconds, script))
        print_table(results, args)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    return 0


def print_table(results: dict[tuple[str, int], list[tuple[float, float, float]]],
                args: argparse.Namespace) -> None:
    med = {key: tuple(statistics.median(r[i] for r in runs) for i in range(3))
           for key, runs in results.items()}
    print(f"\nwrk -t1, {args.rounds} interleaved rounds x {args.seconds}s, medians; "
          f"{os.cpu_count()} CPUs; {args.upstream} upstream\n")
    print(f"{'target':<10} {'p50 ms (1 conn)':>16} {'added vs memory':>16} "
          f"{'req/s (32 conns)':>17} {'vs w1 of same':>14}")
    for target in TARGETS:
        p50 = med[(target, 1)][1]
        same_w1 = target.replace("w2", "w1")
        added = p50 - med[(target.replace("redis", "memory"), 1)][1]
        rps = med[(target, 32)][0]
        ratio = rps / med[(same_w1, 32)][0]
        print(f"{target:<10} {p50:>16.3f} {added:>+15.3f}ms {rps:>17.0f} {ratio:>13.2f}x")


if __name__ == "__main__":
    sys.exit(main())
