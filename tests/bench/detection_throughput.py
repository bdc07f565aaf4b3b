"""Detection through the running gateway (`veil serve`, NER workers one per core), in one run:

    throughput   distinct ~600-character prompts at 32 connections (wrk), full detection
                 (patterns + NER) and patterns only
    latency      sequential distinct prompts of 2 KB and 20 KB, full detection, p50
    worst case   1 MB of ordinary text beside 1 MB adversarial inputs (repeated PEM headers,
                 `password=` chains, JWT fragments, thousands of distinct names), with `/healthz`
                 probed every 20 ms meanwhile

Prompts come from the labelled eval texts (realistic PII density), each made distinct by a
counter so the span cache never answers. Needs wrk (apt-get install wrk).
Run: .venv/bin/python tests/bench/detection_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from proxy_overhead import KEY, ROOT, UPSTREAM, free_port, start, wrk

from gateway.ingress.auth import hash_api_key

DATASET = ROOT.parent / "shared/pii-eval/synth_dataset_v2.json"
AUTH = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}

WRK_SCRIPT = """
local prompts = {prompts}
local n = 0
request = function()
  n = n + 1
  local body = '{{"model": "bench", "messages": [{{"role": "user", "content": "'
      .. prompts[(n % #prompts) + 1] .. ' (ref ' .. n .. ')"}}]}}'
  return wrk.format("POST", "/v1/chat/completions",
      {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {key}"}}, body)
end
"""


def prompts(size: int, count: int) -> list[str]:
    texts = [r["full_text"] for r in json.loads(DATASET.read_text())]
    out, i = [], 0
    while len(out) < count:
        chunk = ""
        while len(chunk) < size:
            chunk += texts[i % len(texts)] + " "
            i += 1
        out.append(chunk[:size])
    return out


def lua_string(text: str) -> str:
    """A Lua string literal whose content is also valid inside a JSON string."""
    inner = json.dumps(text)[1:-1]
    return "'" + inner.replace("\\", "\\\\").replace("'", "\\'") + "'"


def config(directory: Path, upstream: str, port: int, builtin: str,
           policy: Path | None = None) -> Path:
    """A gateway config; its policy runs `builtin` detectors, or is the `policy` file."""
    if policy is None:
        policy = directory / f"{builtin.replace(', ', '-')}.yaml"
        policy.write_text(f"version: 1\nname: bench\ndetectors: {{builtin: [{builtin}], "
                          "time_limit_s: 600}\n")
    path = directory / f"{policy.stem}.config.yaml"
    path.write_text(f"""
listen: {{host: 127.0.0.1, port: {port}}}
logging: {{level: warning}}
limits: {{max_body_bytes: 20000000}}
default_rate_limit: {{requests_per_second: 1000000, burst: 1000000}}
tenants: {{bench: {{}}}}
api_keys: [{{name: bench, tenant: bench, hash: "{hash_api_key(KEY)}"}}]
backends: [{{name: up, url: "{upstream}", pool_size: 100}}]
models: {{bench: [up]}}
policies: {{files: ["{policy}"], watch_interval_s: 0}}
""")
    return path


def post(url: str, content: str) -> float:
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": content}]})
    request = urllib.request.Request(url + "/v1/chat/completions", data=body.encode(),
                                     headers=AUTH)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=900) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
    return time.perf_counter() - started


def wait_ready(url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


class Prober(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.latencies, self.stop = url, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(self.url + "/healthz", timeout=30) as r:
                r.read()
            self.latencies.append(time.perf_counter() - started)
            time.sleep(0.02)


def adversarial(size: int) -> dict[str, str]:
    def repeat(unit: str) -> str:
        return (unit * (size // len(unit) + 1))[:size]

    names = " ".join(f"Dear Person{i:06d} Smith{i % 977:03d}, thanks." for i in
                     range(size // 30))[:size]
    return {"repeated PEM headers": repeat("-----BEGIN RSA PRIVATE KEY-----\\n"),
            "password= chains": repeat("password="),
            "JWT fragments": repeat("eyJhbGciOiJIUzI1NiJ9."),
            "thousands of distinct names": names}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worst-case-size", type=int, default=1_000_000)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="veil-bench-detect-"))
    script = tmp / "prompts.lua"
    script.write_text(WRK_SCRIPT.format(
        prompts="{" + ", ".join(lua_string(p) for p in prompts(600, 500)) + "}", key=KEY))
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    processes = [start(UPSTREAM, str(upstream_port))]
    gateways, pids = {}, {}
    for name, builtin in (("full", "patterns, presidio"), ("patterns", "patterns")):
        port = free_port()
        processes.append(start([sys.executable, "-m", "gateway", "serve", "--config",
                                str(config(tmp, upstream, port, builtin))]))
        gateways[name] = f"http://127.0.0.1:{port}"
        pids[name] = processes[-1].pid
    try:
        for url in gateways.values():
            wait_ready(url)
        throughput(gateways, script, args)
        latency(gateways["full"])
        worst_case(gateways, pids, args.worst_case_size)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    return 0


def throughput(gateways: dict[str, str], script: Path, args: argparse.Namespace) -> None:
    results: dict[str, list[tuple[float, float, float]]] = {}
    for url in gateways.values():
        wrk(url, 32, 3, script)  # warm-up
    for _ in range(args.rounds):
        for name, url in gateways.items():
            results.setdefault(name, []).append(wrk(url, 32, args.seconds, script))
    print(f"\nthroughput: distinct ~600-character prompts, 32 connections, wrk -t1, "
          f"{args.rounds} interleaved rounds x {args.seconds}s, medians; {os.cpu_count()} CPUs")
    print(f"{'detection':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, runs in results.items():
        rps, p50, p99 = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"{name:<10} {rps:>8.0f} {p50:>8.1f} {p99:>8.1f}")


def latency(url: str) -> None:
    print("\nlatency: sequential distinct prompts, full detection, through the gateway")
    print(f"{'prompt':<8} {'p50 ms':>8} {'p90 ms':>8}")
    for label, size in (("2 KB", 2048), ("20 KB", 20480)):
        samples = [post(url, p) for p in prompts(size, 25)]
        samples.sort()
        print(f"{label:<8} {statistics.median(samples) * 1000:>8.1f} "
              f"{samples[int(len(samples) * 0.9)] * 1000:>8.1f}")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    return kb / 1024


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as found:
        return [int(child) for child in found.read().split()]


def memory(pid: int) -> str:
    """The gateway's RSS, and its NER workers' (largest), in MB."""
    workers = [rss_mb(child) for child in children(pid)]
    return f"{rss_mb(pid):.0f} / {max(workers):.0f}" if workers else f"{rss_mb(pid):.0f} / -"


def worst_case(gateways: dict[str, str], pids: dict[str, int], size: int) -> None:
    ordinary = "".join(prompts(size // 10, 10))[:size]
    print(f"\nworst case: {size // 1000} KB prompts, /healthz probed every 20 ms meanwhile; "
          "RSS in MB after each (gateway / largest NER worker)")
    print(f"{'detection':<10} {'input':<28} {'seconds':>8} {'vs ordinary':>12} "
          f"{'healthz max ms':>15} {'RSS MB':>10}")
    for name, url in gateways.items():
        print(f"{name:<10} {'(before)':<28} {'':>8} {'':>12} {'':>15} "
              f"{memory(pids[name]):>10}")
        base = None
        for label, text in {"ordinary text": ordinary, **adversarial(size)}.items():
            prober = Prober(url)
            prober.start()
            seconds = post(url, text)
            prober.stop.set()
            prober.join()
            base = base or seconds
            print(f"{name:<10} {label:<28} {seconds:>8.2f} {seconds / base:>11.1f}x "
                  f"{max(prober.latencies) * 1000:>15.1f} {memory(pids[name]):>10}")


if __name__ == "__main__":
    sys.exit(main())
