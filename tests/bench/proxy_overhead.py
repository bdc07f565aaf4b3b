"""Proxy overhead with wrk on loopback, side by side in one run:

    direct        wrk -> upstream (a tiny aiohttp server with a fixed reply)
    passthrough   wrk -> minimal aiohttp pass-through (defined below: the floor for a Python proxy)
    veil          wrk -> veil serve (auth, validation, routing, metrics, access log) -> upstream
    veil+trace    the same with tracing on, every request sampled, exported to a local sink

Each target runs in its own process on uvloop, as `veil serve` does; rounds are interleaved and
medians reported, because the machine is noisy. Run: `make bench` (needs wrk: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from gateway.ingress.auth import hash_api_key

ROOT = Path(__file__).parents[2]
KEY = "veil-bench-key-0123456789"
BODY = json.dumps({"model": "bench", "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Summarise the quarterly report in three bullet points."}]})

UPSTREAM = '''
import sys
import uvloop
from aiohttp import web
REPLY = {"id": "x", "object": "chat.completion", "created": 0, "model": "bench",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " * 40},
                      "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 60}}
async def chat(request):
    await request.read()
    return web.json_response(REPLY)
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/chat/completions", chat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
            loop=uvloop.new_event_loop())
'''

TRACE_SINK = '''
import sys
from aiohttp import web
async def traces(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/traces", traces)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
'''

PASSTHROUGH = '''
import sys
import uvloop
import aiohttp
from aiohttp import web
UPSTREAM = sys.argv[2]
async def session_ctx(app):
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    yield
    await app["session"].close()
async def proxy(request):
    body = await request.read()
    async with request.app["session"].post(UPSTREAM + request.path, data=body,
            headers={"Content-Type": "application/json"}) as upstream:
        payload = await upstream.read()
        return web.Response(body=payload, status=upstream.status,
                            content_type=upstream.content_type)
app = web.Application(client_max_size=64 * 1024 * 1024)
app.cleanup_ctx.append(session_ctx)
app.router.add_post("/v1/chat/completions", proxy)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
            loop=uvloop.new_event_loop())
'''

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


TARGETS = ("direct", "passthrough", "veil", "veil+trace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    request = urllib.request.Request(url + "/v1/chat/completions", data=BODY.encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {KEY}"})
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def start(code_or_cmd: str | list[str], *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-c", code_or_cmd, *args] if isinstance(code_or_cmd, str) \
        else code_or_cmd
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def veil_config(directory: Path, upstream: str, port: int, traces: str | None = None) -> Path:
    path = directory / f"bench-{port}.yaml"
    tracing = f"tracing: {{enabled: true, endpoint: '{traces}/v1/traces'}}" if traces else ""
    path.write_text(f"""
{tracing}
listen: {{host: 127.0.0.1, port: {port}}}
logging: {{level: {os.environ.get("BENCH_LOG_LEVEL", "info")}}}
default_rate_limit: {{requests_per_second: 1000000, burst: 1000000}}
tenants: {{bench: {{}}}}
api_keys: [{{name: bench, tenant: bench, hash: "{hash_api_key(KEY)}"}}]
backends: [{{name: up, url: "{upstream}", pool_size: 100}}]
models: {{bench: [up]}}
policies: {{files: ["{directory / "no-detectors.yaml"}"], watch_interval_s: 0}}
""")
    # The proxy alone: masking is measured by the other benchmarks.
    (directory / "no-detectors.yaml").write_text(
        "version: 1\nname: proxy-only\ndetectors: {builtin: []}\n")
    return path


def wrk(url: str, connections: int, seconds: int, script: Path) -> tuple[float, float, float]:
    """Returns (requests/s, p50 ms, p99 ms)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         url + "/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    if re.search(r"Non-2xx", out):
        raise RuntimeError(f"non-2xx answers from {url}:\n{out}")

    def percentile(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([0-9.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rps, percentile("50"), percentile("99")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="1,32")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=json.dumps(BODY), key=KEY))
    ports = {name: free_port() for name in ("upstream", "passthrough", "veil", "veil+trace",
                                            "sink")}
    upstream_url = f"http://127.0.0.1:{ports['upstream']}"
    processes = [start(UPSTREAM, str(ports["upstream"]))]
    processes.append(start(PASSTHROUGH, str(ports["passthrough"]), upstream_url))
    processes.append(start(TRACE_SINK, str(ports["sink"])))
    sink = f"http://127.0.0.1:{ports['sink']}"
    for name, traces in (("veil", None), ("veil+trace", sink)):
        config = veil_config(tmp, upstream_url, ports[name], traces)
        processes.append(start([sys.executable, "-m", "gateway", "serve", "--config",
                                str(config)]))
    targets = {name: f"http://127.0.0.1:{ports[name if name != 'direct' else 'upstream']}"
               for name in TARGETS}
    try:
        for url in targets.values():
            wait_ready(url)
        results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for connections in [int(c) for c in args.connections.split(",")]:
            for url in targets.values():  # warm-up
                wrk(url, connections, 1, script)
            for _ in range(args.rounds):
                for name, url in targets.items():
                    results.setdefault((name, connections), []).append(
                        wrk(url, connections, args.seconds, script))
        print_table(results, args)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
    return 0


def print_table(results: dict[tuple[str, int], list[tuple[float, float, float]]],
                args: argparse.Namespace) -> None:
    print(f"\nwrk -t1, {args.rounds} interleaved rounds x {args.seconds}s, medians; "
          f"{os.cpu_count()} CPUs\n")
    print(f"{'conns':>5}  {'target':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'req/s vs passthrough':>21} {'p50 added vs direct':>20}")
    for connections in sorted({c for _, c in results}):
        med = {name: tuple(statistics.median(r[i] for r in results[(name, connections)])
                           for i in range(3))
               for name in TARGETS}
        for name in TARGETS:
            rps, p50, p99 = med[name]
            ratio = rps / med["passthrough"][0]
            added = p50 - med["direct"][1]
            print(f"{connections:>5}  {name:<12} {rps:>9.0f} {p50:>8.3f} {p99:>8.3f} "
                  f"{ratio:>20.0%} {added:>+19.3f}ms")


if __name__ == "__main__":
    sys.exit(main())
