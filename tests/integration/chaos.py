"""A chaos upstream and the soak harness that drives `veil serve` through it.

`ChaosUpstream` is an OpenAI-compatible `/v1/chat/completions` (streamed and not) that picks,
for each request and from a seeded RNG, one behaviour: a normal reply echoing the (masked) user
message back, so the gateway has placeholders to restore; the same after a delay; a 500, a 429
with `Retry-After: 1` or a 503, each with an error JSON; a connection reset mid-body; malformed
SSE (or a non-JSON body); a truncated JSON document (or a stream cut inside an event); a stall
longer than the gateway's read timeout. It keeps every request body it received.

`soak()` starts a real `veil serve` process in front of several chaos upstreams, runs many
concurrent clients whose prompts carry unique canaries (an email, a phone number, a card number
with a valid Luhn digit, an API key: all masked by the pattern tier), checks every answer and
samples the gateway's RSS. `tests/integration/test_soak.py` asserts on its `SoakResult`;
`tests/bench/soak.py` runs it longer and prints a table.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from gateway.ingress.auth import hash_api_key
from tests.servers import TEST_KEY, TEST_POLICY, UNLIMITED, backend, write_policy

ROOT = Path(__file__).parents[2]
MODEL = "soak-model"
READ_TIMEOUT_S = 2.0  # the gateway's read timeout towards each chaos backend
STALL_S = READ_TIMEOUT_S + 1.5  # a stall outlasts it
# Statuses a client may get back: the upstream's own 429 relayed, or the gateway's 502/503/504
# (every backend broke, refused or stalled); 500 in case a backend's 500 is relayed some day.
ERROR_STATUSES = frozenset({429, 500, 502, 503, 504})

# behaviour -> weight
BEHAVIOURS: dict[str, int] = {
    "normal": 40, "delay": 14, "error_500": 8, "rate_limited_429": 6, "unavailable_503": 6,
    "reset": 7, "malformed": 6, "truncated": 7, "stall": 6,
}


def _data(obj: object) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _chunk(cid: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    return _data({"id": cid, "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def _last_user_text(body: Any) -> str:
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


class ChaosUpstream:
    """One misbehaving model server; `behaviours` counts what it chose."""

    def __init__(self, seed: int, *, stall_s: float = STALL_S,
                 weights: dict[str, int] | None = None) -> None:
        self.rng = random.Random(seed)
        self.stall_s = stall_s
        weights = weights or BEHAVIOURS
        self.names = list(weights)
        self.weights = list(weights.values())
        self.received: list[bytes] = []  # every request body, for the leak check
        self.behaviours: Counter[str] = Counter()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    def choose(self) -> str:
        return self.rng.choices(self.names, self.weights)[0]

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.received.append(raw)
        body = json.loads(raw)
        behaviour = self.choose()
        self.behaviours[behaviour] += 1
        stream = bool(body.get("stream"))
        text = "Echo: " + _last_user_text(body)
        if behaviour == "delay":
            await asyncio.sleep(self.rng.uniform(0.05, 1.0))
        elif behaviour in ("error_500", "rate_limited_429", "unavailable_503"):
            status = int(behaviour.split("_")[-1])
            headers = {"Retry-After": "1"} if status == 429 else {}
            return web.json_response({"error": {"message": f"chaos {behaviour}",
                                                "type": "server_error"}},
                                     status=status, headers=headers)
        elif behaviour == "stall" and self.rng.random() < 0.5:
            await asyncio.sleep(self.stall_s)  # nothing at all, not even headers
            return web.json_response({"late": True})
        try:
            if stream:
                return await self._stream(request, text, behaviour)
            return await self._whole(request, text, behaviour)
        except ConnectionResetError:  # the gateway gave up on this reply (and said so)
            self.behaviours["gateway_hung_up"] += 1
            return web.Response()  # never sent: the connection is gone

    async def _whole(self, request: web.Request, text: str, behaviour: str) -> web.StreamResponse:
        document = json.dumps({
            "id": "chatcmpl-chaos", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        if behaviour in ("normal", "delay"):
            return web.Response(body=document, content_type="application/json")
        reply = web.StreamResponse(headers={"Content-Type": "application/json"})
        await reply.prepare(request)
        if behaviour == "malformed":
            await reply.write(b"\x00\xffnot json at all {{{" + os.urandom(16))
        else:
            await reply.write(document[:len(document) // 2])
        if behaviour == "reset":
            assert request.transport is not None
            request.transport.abort()
            return reply
        if behaviour == "stall":
            await asyncio.sleep(self.stall_s)  # headers and half a body, then nothing
        await reply.write_eof()
        return reply

    async def _stream(self, request: web.Request, text: str, behaviour: str) -> web.StreamResponse:
        cid = f"chatcmpl-chaos-{self.rng.getrandbits(32):08x}"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_chunk(cid, {"role": "assistant", "content": ""}))
        pieces = [text[i:i + 5] for i in range(0, len(text), 5)]  # placeholders split across
        cut = self.rng.randrange(1, max(2, len(pieces)))  # where a fault strikes
        for i, piece in enumerate(pieces):
            if i == cut and behaviour == "malformed":
                # a `data:` line that is not JSON, or lines that are no SSE field at all
                await response.write(
                    b"data: {\"id\": not json]\n\n" if self.rng.random() < 0.5
                    else b"\x00\xff\xfe garbage \x01\n" + os.urandom(8).replace(b"\n", b"")
                    + b"\n\n")
            elif i == cut and behaviour not in ("normal", "delay"):
                break
            await response.write(_chunk(cid, {"content": piece}))
        else:
            await response.write(_chunk(cid, {}, "stop"))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        if behaviour == "reset":
            assert request.transport is not None
            request.transport.abort()
            return response
        if behaviour == "truncated":
            await response.write(b'data: {"id": "chatcmpl-chaos", "object": "chat.compl')
        elif behaviour == "stall":
            await asyncio.sleep(self.stall_s)
        await response.write_eof()
        return response


# --- canaries -------------------------------------------------------------------------------

ALNUM = string.ascii_letters + string.digits
# What any canary looks like, whole or in part: the prompt's own words hold no digits, no
# `soak.example`, no `sk-soak`, so whatever this finds in an upstream body or a log came from
# a canary.
CANARY_SHAPE = re.compile(r"soak\.example|sk-soak|415 555 \d|\d{4} \d{4} \d{4} \d{4}")


def luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, digit in enumerate(reversed(digits)):  # the check digit will sit right of these
        doubled = digit * 2 if i % 2 == 0 else digit
        total += doubled - 9 if doubled > 9 else doubled
    digits.append((10 - total % 10) % 10)
    text = "".join(map(str, digits))
    return " ".join(text[i:i + 4] for i in range(0, 16, 4))


@dataclass(frozen=True)
class Canaries:
    email: str
    phone: str
    card: str
    secret: str

    @classmethod
    def make(cls, n: int, rng: random.Random) -> Canaries:
        token = "".join(rng.choices(string.ascii_lowercase, k=6))
        return cls(email=f"user{n}.{token}@soak.example",
                   phone=f"+1 415 555 {rng.randrange(10_000):04d}",
                   card=luhn_card(rng),
                   secret="sk-soak" + "".join(rng.choices(ALNUM, k=36)))

    def values(self) -> tuple[str, ...]:
        return (self.email, self.phone, self.card, self.secret)

    def prompt(self) -> str:
        return (f"Please write to {self.email} or call {self.phone}; the card is {self.card} "
                f"and the key is {self.secret}. Repeat them back.")


# --- checking one answer --------------------------------------------------------------------

def _envelope_problem(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return "error_not_json"
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return "error_not_envelope"
    return None


def _restored(text: str, canaries: Canaries) -> bool:
    return all(v in text for v in canaries.values()) and "<EMAIL" not in text


def check_whole(status: int, body: bytes, canaries: Canaries) -> str:
    """An outcome name; a problem's name starts with `bad_`."""
    if status == 200:
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return "bad_200_not_valid_json"
        return "200" if _restored(content, canaries) else "bad_200_not_restored"
    if status not in ERROR_STATUSES:
        return f"bad_status_{status}"
    return f"bad_{problem}_{status}" if (problem := _envelope_problem(body)) else str(status)


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _data_fields(body: bytes) -> list[bytes]:
    """Each event's data; events without a data field are skipped, as an SSE client does
    (comments, and lines that are no SSE field at all)."""
    found = []
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
        if lines:
            found.append(b"\n".join(lines))
    return found


def _complete(chunks: list[dict[str, Any]], canaries: Canaries) -> str:
    choices = [c for chunk in chunks for c in chunk.get("choices") or []]
    if not any(c.get("finish_reason") is not None for c in choices):
        return "bad_stream_done_without_finish"
    text = "".join((c.get("delta") or {}).get("content") or "" for c in choices)
    return "stream_complete" if _restored(text, canaries) else "bad_stream_not_restored"


def check_stream(status: int, content_type: str, body: bytes, canaries: Canaries) -> str:
    """As `check_whole` for a streamed request: complete, error-ended, or a problem."""
    if status != 200:
        return check_whole(status, body, canaries)
    *middle, last = _data_fields(body) or [b""]
    if not content_type.startswith("text/event-stream"):
        return "bad_stream_not_sse"
    chunks = []
    for data in middle:
        parsed = _json_object(data)
        if parsed is None or "error" in parsed:
            return f"bad_stream_{'event_not_json' if parsed is None else 'event_after_error'}"
        chunks.append(parsed)
    if last == b"[DONE]":
        return _complete(chunks, canaries)
    parsed = _json_object(last)
    return "stream_error" if parsed is not None and "error" in parsed \
        else "bad_stream_unterminated"


# --- the gateway process --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` and its children (KiB); 0 once it is gone."""
    total = 0
    pids = [pid]
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().split()[3]) == pid:
                pids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def write_config(directory: Path, upstreams: list[str], port: int) -> Path:
    backends = [backend(f"chaos-{i}", url, read_timeout_s=READ_TIMEOUT_S)
                for i, url in enumerate(upstreams)]
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "logging": {"level": "debug"},
        "default_rate_limit": UNLIMITED,
        "tenants": {"soak": {"models": ["*"], "rate_limit": UNLIMITED}},
        "api_keys": [{"name": "soak-key", "tenant": "soak", "hash": hash_api_key(TEST_KEY)}],
        "backends": backends,
        "models": {MODEL: [b["name"] for b in backends]},
        "policies": {"files": [write_policy(TEST_POLICY, directory)], "watch_interval_s": 0},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- the soak -------------------------------------------------------------------------------

@dataclass
class SoakResult:
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: dict[str, list[str]] = field(default_factory=dict)  # outcome -> a few samples
    latencies_ms: list[float] = field(default_factory=list)
    behaviours: Counter[str] = field(default_factory=Counter)
    upstream_requests: int = 0
    upstream_leaks: list[str] = field(default_factory=list)
    log_leaks: list[str] = field(default_factory=list)
    log_lines: int = 0
    log_tracebacks: int = 0
    log_levels: Counter[str] = field(default_factory=Counter)
    rss_start_kib: int = 0
    rss_warm_kib: int = 0
    rss_end_kib: int = 0
    rss_peak_kib: int = 0
    died: str | None = None  # how the gateway process ended before it was stopped
    exit_code: int | None = None
    wall_s: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    @property
    def bad(self) -> Counter[str]:
        return Counter({k: v for k, v in self.outcomes.items() if k.startswith("bad_")})

    @property
    def rss_growth(self) -> float:
        return (self.rss_end_kib - self.rss_warm_kib) / max(1, self.rss_warm_kib)

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        return (f"{self.requests} requests in {self.wall_s:.1f} s: {dict(self.outcomes)}; "
                f"problems {self.problems}; upstream saw {self.upstream_requests} "
                f"({dict(self.behaviours)}); leaks upstream {self.upstream_leaks[:3]} "
                f"logs {self.log_leaks[:3]}; log levels {dict(self.log_levels)}, tracebacks "
                f"{self.log_tracebacks}; RSS KiB start {self.rss_start_kib} warm "
                f"{self.rss_warm_kib} end {self.rss_end_kib} peak {self.rss_peak_kib} "
                f"({self.rss_growth:+.1%}); died {self.died}; p50 {self.percentile(0.5):.0f} ms "
                f"p99 {self.percentile(0.99):.0f} ms")


async def _wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"veil serve exited during start-up ({process.returncode})")
            try:
                async with session.get(url + "/readyz",
                                       timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("veil serve never became ready")


class Clients:
    """Concurrent clients, each sending one request after another until `stop` is set; each
    request carries canaries of its own, every answer is checked into `result`."""

    def __init__(self, session: aiohttp.ClientSession, url: str, result: SoakResult, *,
                 seed: int, timeout_s: float) -> None:
        self.session = session
        self.url = url + "/v1/chat/completions"
        self.result = result
        self.rng = random.Random(seed)
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.stop = asyncio.Event()
        self.canaries: list[Canaries] = []

    async def run(self) -> None:
        while not self.stop.is_set():
            await self.one()

    async def one(self) -> None:
        mine = Canaries.make(len(self.canaries) + 1, self.rng)
        self.canaries.append(mine)
        stream = self.rng.random() < 0.5
        body = {"model": MODEL, "stream": stream,
                "messages": [{"role": "user", "content": mine.prompt()}]}
        started = time.monotonic()
        try:
            async with self.session.post(self.url, json=body, timeout=self.timeout,
                                         headers={"Authorization": f"Bearer {TEST_KEY}"}) as r:
                raw = await r.read()
                outcome = (check_stream(r.status, r.headers.get("Content-Type", ""), raw, mine)
                           if stream else check_whole(r.status, raw, mine))
                sample = f"{r.status} {'stream' if stream else 'whole'} {raw[-300:]!r}"
        except TimeoutError:  # before ClientError: aiohttp's timeouts are both
            outcome = "bad_hung"
            sample = f"stream={stream}: no answer in {self.timeout.total} s"
        except aiohttp.ClientError as exc:
            outcome, sample = f"bad_client_{type(exc).__name__}", f"stream={stream}: {exc}"
        self.result.latencies_ms.append((time.monotonic() - started) * 1000)
        self.result.outcomes[outcome] += 1
        if outcome.startswith("bad_"):
            samples = self.result.problems.setdefault(outcome, [])
            if len(samples) < 3:
                samples.append(sample)


def _leaks(texts: list[str], values: set[str]) -> list[str]:
    """Canary-shaped strings found in `texts`, each marked whether it is a whole canary."""
    found = []
    for text in texts:
        for m in CANARY_SHAPE.finditer(text):
            kind = "canary" if any(v in text for v in values if m.group() in v) else "part"
            found.append(f"{kind}: ...{text[max(0, m.start() - 40):m.end() + 40]}...")
    return found


def _scan_logs(log_text: str, values: set[str], result: SoakResult) -> None:
    lines = log_text.splitlines()
    result.log_lines = len(lines)
    result.log_leaks = _leaks(lines, values)
    result.log_tracebacks = log_text.count("Traceback")
    for line in lines:
        level = "plain"
        if line.startswith("{"):
            try:
                level = str(json.loads(line).get("level", "?"))
            except ValueError:
                level = "unparsed"
        result.log_levels[level] += 1


async def _load(process: subprocess.Popen[bytes], url: str, result: SoakResult, *,
                duration_s: float, warmup_s: float, clients: int, client_timeout_s: float,
                seed: int) -> list[Canaries]:
    """The clients against the gateway for `duration_s`, RSS sampled each second."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        load = Clients(session, url, result, seed=seed, timeout_s=client_timeout_s)
        tasks = [asyncio.create_task(load.run()) for _ in range(clients)]
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < duration_s:
            await asyncio.sleep(min(1.0, duration_s - elapsed))
            rss = rss_kib(process.pid)
            result.rss_peak_kib = max(result.rss_peak_kib, rss)
            if not result.rss_warm_kib and time.monotonic() - began >= warmup_s:
                result.rss_warm_kib = rss
            if process.poll() is not None:
                result.died = f"exited {process.returncode} during the load"
                break
        result.rss_end_kib = rss_kib(process.pid)  # under load, as the warm sample was
        load.stop.set()  # each client finishes the request it is in
        await asyncio.wait(tasks, timeout=client_timeout_s + 5)
        for task in tasks:
            task.cancel()
    if process.poll() is not None and result.died is None:
        result.died = f"exited {process.returncode} after the load"
    return load.canaries


async def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(process.wait, 30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


async def soak(*, duration_s: float, warmup_s: float, clients: int, client_timeout_s: float = 30,
               backends: int = 3, seed: int = 16, directory: Path | None = None) -> SoakResult:
    """Run the whole soak: `clients` concurrent clients for `duration_s` (the first
    `warmup_s` of it before the warm RSS sample) against `veil serve` in front of `backends`
    chaos upstreams; the gateway's log is `directory/gateway.log`."""
    directory = directory or Path(tempfile.mkdtemp(prefix="veil-soak-"))
    result = SoakResult()
    upstreams = [ChaosUpstream(seed + i) for i in range(backends)]
    runners = [web.AppRunner(u.app(), handler_cancellation=True, access_log=None)
               for u in upstreams]
    for runner in runners:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = free_port()
    config = write_config(directory, [f"http://127.0.0.1:{r.addresses[0][1]}" for r in runners],
                          port)
    log_path = directory / "gateway.log"
    began = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "1"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            # Unset, not empty: prometheus_client takes any value (even "") as a directory and
            # writes its .db files into the working directory.
            env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
    url = f"http://127.0.0.1:{port}"
    canaries: list[Canaries] = []
    try:
        await _wait_ready(url, process, 60)
        result.rss_start_kib = rss_kib(process.pid)
        canaries = await _load(process, url, result, duration_s=duration_s, warmup_s=warmup_s,
                               clients=clients, client_timeout_s=client_timeout_s, seed=seed)
    finally:
        result.exit_code = await _stop(process)
        for runner in runners:
            await runner.cleanup()
    result.wall_s = time.monotonic() - began
    values = {v for c in canaries for v in c.values()}
    received = [raw.decode("utf-8", "replace") for u in upstreams for raw in u.received]
    result.upstream_requests = len(received)
    result.upstream_leaks = _leaks(received, values)
    for upstream in upstreams:
        result.behaviours.update(upstream.behaviours)
    _scan_logs(log_path.read_text("utf-8", "replace"), values, result)
    return result
