"""Proxy cost in instructions per request, counted by callgrind: deterministic where wall-clock
throughput on a shared machine varies by 2x from one minute to the next, so it is the measure
to steer by when working on the proxy's overhead (proxy_overhead.py gives the wall-clock view).

    passthrough   the minimal aiohttp pass-through of proxy_overhead.py
    veil          veil serve with the same configuration as there (a policy with no detectors)

Each runs under `valgrind --tool=callgrind`; after a warm-up the counters are zeroed, N requests
are sent over K keep-alive connections by a raw HTTP/1.1 client, and the counters are dumped.
Only the proxy process is counted (the kernel's share of system calls is not). Needs valgrind
(apt-get install valgrind); takes about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proxy_overhead import BODY, KEY, PASSTHROUGH, ROOT, UPSTREAM, free_port, veil_config

REQUEST = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           f"Content-Type: application/json\r\nAuthorization: Bearer {KEY}\r\n"
           f"Content-Length: {len(BODY.encode())}\r\n\r\n").encode() + BODY.encode()


async def _connection(port: int, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            writer.write(REQUEST)
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"unexpected answer: {status!r}")
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
    finally:
        writer.close()


def send(port: int, requests: int, connections: int) -> None:
    async def run() -> None:
        await asyncio.gather(*(_connection(port, requests // connections)
                               for _ in range(connections)))
    asyncio.run(run())


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300  # Python under valgrind starts slowly
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the process under valgrind exited")
        try:
            send(port, 1, 1)
        except (OSError, RuntimeError):
            time.sleep(1)
        else:
            return
    raise RuntimeError(f"port {port} did not become ready")


def instructions(cmd: list[str], port: int, out: Path, args: argparse.Namespace) -> int:
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--cache-sim=no",
         f"--callgrind-out-file={out}.%p", *cmd],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, process)
        send(port, args.warmup, args.connections)
        subprocess.run(["callgrind_control", "-z", str(process.pid)], check=True,
                       capture_output=True)
        send(port, args.requests, args.connections)
        subprocess.run(["callgrind_control", "-d", str(process.pid)], check=True,
                       capture_output=True)
        dump = Path(f"{out}.{process.pid}.1")
        for line in dump.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1]) // args.requests
        raise RuntimeError(f"no totals in {dump}")
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    ports = {name: free_port() for name in ("upstream", "passthrough", "veil")}
    upstream_url = f"http://127.0.0.1:{ports['upstream']}"
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(ports["upstream"])],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = veil_config(tmp, upstream_url, ports["veil"])
    try:
        counted = {
            "passthrough": instructions([sys.executable, "-c", PASSTHROUGH,
                                         str(ports["passthrough"]), upstream_url],
                                        ports["passthrough"], tmp / "passthrough", args),
            "veil": instructions([sys.executable, "-m", "gateway", "serve", "--config",
                                  str(config)], ports["veil"], tmp / "veil", args),
        }
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
    print(f"\ncallgrind, {args.requests} requests over {args.connections} connections "
          f"after {args.warmup} warm-up requests\n")
    print(f"{'target':<12} {'instructions/request':>21} {'passthrough / target':>21}")
    for name, count in counted.items():
        print(f"{name:<12} {count:>21,} {counted['passthrough'] / count:>20.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
