"""The leak test: unique canaries of every entity type go through the real gateway (`veil
serve` in its own process, logging at DEBUG, audit on) on every path, then every byte the
system wrote is scanned for them, raw and in common encodings. Target: zero occurrences.

Scanned: the gateway's whole log output, the audit trail, the metrics page, and every body
the upstream model servers received. (What the client receives back is its own data.)
Policy reloads are on the path too: a broken edit whose errors name canaries (SIGHUP), then a
valid edit picked up by the file watcher, with canary traffic before and after.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import httpx2 as httpx
import openai
import pytest
from aiohttp import web

from gateway.demo.upstream import DEMO, build_demo_app
from gateway.ingress.auth import hash_api_key
from gateway.privacy.patterns import luhn
from tests.integration.faults import FaultyUpstream
from tests.otlp import Collector
from tests.servers import TEST_KEY, ServerThread

ROOT = Path(__file__).parents[2]
rng = random.Random()  # a fresh draw each run: nothing can be "already known" to the gateway


def _letters(n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


def _digits(n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _card() -> str:
    body = "4" + _digits(14)
    check = next(d for d in string.digits if luhn(body + d))
    return body + check


def _iban() -> str:
    bban = "WEST" + _digits(14)
    numeric = "".join(str(int(c, 36)) for c in bban + "GB00")
    return f"GB{98 - int(numeric) % 97:02d}{bban}"


def _b64(n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


@dataclass
class Canaries:
    name: str = field(default_factory=lambda: f"{_letters(7).title()} {_letters(9).title()}")
    email: str = field(default_factory=lambda: f"canary.{_letters(10)}@example.org")
    phone: str = field(default_factory=lambda: f"+44 20 7{_digits(3)} {_digits(4)}")
    card: str = field(default_factory=_card)
    iban: str = field(default_factory=_iban)
    ssn: str = field(default_factory=lambda: f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-"
                                             f"{rng.randint(1000, 9999)}")
    ip: str = field(default_factory=lambda: f"10.{rng.randint(1, 254)}.{rng.randint(1, 254)}."
                                            f"{rng.randint(1, 254)}")
    api_key: str = field(default_factory=lambda: "sk-proj-" + _b64(40))
    aws_key: str = field(default_factory=lambda: "AKIA" + "".join(
        rng.choice(string.ascii_uppercase + string.digits) for _ in range(16)))
    jwt: str = field(default_factory=lambda: f"eyJ{_b64(20)}.eyJ{_b64(30)}.{_b64(43)}")
    pem_body: str = field(default_factory=lambda: _b64(64))
    db_password: str = field(default_factory=lambda: "Pw" + _b64(14))
    codename: str = field(default_factory=lambda: "Project " + _letters(8).title())

    def values(self) -> dict[str, str]:
        return dict(vars(self))

    def prompt(self) -> str:
        return (f"My name is {self.name}. Email {self.email}, phone {self.phone}, card "
                f"{self.card}, IBAN {self.iban}, SSN {self.ssn}, host {self.ip}, keys "
                f"{self.api_key} and {self.aws_key}, token {self.jwt}, db "
                f"postgres://svc:{self.db_password}@db.internal/app, key:\n"
                f"-----BEGIN PRIVATE KEY-----\n{self.pem_body}\n-----END PRIVATE KEY-----\n")


def encodings(value: str) -> set[str]:
    """The canary as it would appear raw, JSON-escaped, URL-encoded or base64-encoded (at every
    alignment: a base64 run containing the value contains one of these cores)."""
    forms = {value, json.dumps(value)[1:-1], urllib.parse.quote(value),
             urllib.parse.quote_plus(value)}
    raw = value.encode()
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * offset + raw).decode()
            core = encoded[(offset * 4 + 2) // 3 + 1:-4]
            if len(core) >= 8:
                forms.add(core)
    return {f for f in forms if len(f) >= 6}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EchoUpstream:
    """An upstream whose error answers quote the request, as many real servers' do."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.received: list[bytes] = []

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            raw = await request.read()
            self.received.append(raw)
            return web.json_response({"error": {"message": f"cannot process: {raw.decode()}",
                                                "type": "invalid_request_error"}},
                                     status=self.status)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


@dataclass
class World:
    url: str
    canaries: Canaries
    log: Path
    audit: Path
    audit_key: Path
    upstream_bodies: list[list[bytes]]
    policy: Path
    pid: int
    traces: Collector


def leak_policy(canaries: Canaries, **extra_actions: str) -> dict[str, object]:
    return {"version": 1, "name": "leak",
            "detectors": {"builtin": ["patterns", "presidio"],
                          "deny_list": {"CODENAME": [canaries.codename]}},
            "actions": {"SECRET": "redact", "CODENAME": "block", **extra_actions}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("leak")
    canaries = Canaries()
    echo400, echo500 = EchoUpstream(400), EchoUpstream(500)
    dying = FaultyUpstream("die_mid_stream")
    traces = Collector()
    with ServerThread(build_demo_app()) as demo, ServerThread(echo400.app()) as e400, \
            ServerThread(echo500.app()) as e500, ServerThread(dying.app()) as die, \
            ServerThread(traces.app) as collector:
        port = free_port()
        (tmp / "audit.key").write_text("a" * 64)
        policy = tmp / "leak.yaml"
        policy.write_text(json.dumps(leak_policy(canaries)))
        config = tmp / "config.yaml"
        config.write_text(json.dumps({
            "listen": {"host": "127.0.0.1", "port": port},
            "logging": {"level": "debug"},
            "limits": {"max_body_bytes": 65536},
            "policies": {"files": [str(policy)], "watch_interval_s": 0.2},
            "audit": {"enabled": True, "path": str(tmp / "audit.jsonl"),
                      "key_file": str(tmp / "audit.key")},
            "tracing": {"enabled": True, "endpoint": collector.url + "/v1/traces"},
            "tenants": {"t": {}},
            "api_keys": [{"name": "k", "tenant": "t", "hash": hash_api_key(TEST_KEY)}],
            "backends": [{"name": "demo", "url": demo.url},
                         {"name": "demo-a", "url": demo.url, "format": "anthropic"},
                         {"name": "e400", "url": e400.url}, {"name": "e500", "url": e500.url},
                         {"name": "die", "url": die.url}],
            "models": {"m": ["demo", "demo-a"], "echo-400": ["e400"], "echo-500": ["e500"],
                       "dying": ["die"]},
        }))
        log = tmp / "gateway.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1",
                     "OTEL_BSP_SCHEDULE_DELAY": "100"})  # spans exported within 0.1 s
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                assert process.poll() is None, log.read_text()[-3000:]
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            yield World(url, canaries, log, tmp / "audit.jsonl", tmp / "audit.key",
                        [demo.app[DEMO].received, echo400.received, echo500.received],
                        policy, process.pid, traces)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def drive_every_path(w: World) -> None:
    c, prompt = w.canaries, w.canaries.prompt()
    auth = {"Authorization": f"Bearer {TEST_KEY}"}
    oai = openai.OpenAI(base_url=w.url + "/v1", api_key=TEST_KEY, max_retries=0)
    claude = anthropic.Anthropic(base_url=w.url, api_key=TEST_KEY, max_retries=0)
    messages = [{"role": "system", "content": f"Assist {c.name}."},
                {"role": "user", "content": prompt}]

    reply = oai.chat.completions.create(model="m", messages=messages)
    assert c.email in (reply.choices[0].message.content or "")  # restored for the client
    assert c.email in "".join(ch.choices[0].delta.content or "" for ch in
                              oai.chat.completions.create(model="m", messages=messages,
                                                          stream=True) if ch.choices)
    tools = [{"type": "function", "function": {"name": "send", "parameters": {}}}]
    with oai.chat.completions.stream(model="m", messages=messages, tools=tools) as s:
        s.get_final_completion()
    oai.completions.create(model="m", prompt=prompt)
    list(oai.responses.create(model="m", input=prompt, stream=True))
    oai.embeddings.create(model="m", input=[prompt])
    claude.messages.create(model="m", max_tokens=64, messages=[{"role": "user",
                                                                 "content": prompt}])
    with claude.messages.stream(model="m", max_tokens=64,
                                messages=[{"role": "user", "content": prompt}]) as s:
        "".join(s.text_stream)
    drive_every_field(w, oai, claude)

    def raw(body: bytes, path: str = "/v1/chat/completions",
            headers: dict[str, str] | None = None) -> int:
        return httpx.post(w.url + path, content=body, timeout=30,
                          headers={**auth, "Content-Type": "application/json",
                                   **(headers or {})}).status_code

    full = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]})
    assert raw(json.dumps({"model": "m", "messages": [
        {"role": "user", "content": f"{prompt} about {c.codename}"}]}).encode()) == 400
    assert raw(full[:-20].encode()) == 400  # malformed JSON, canaries inside
    assert raw(full.encode()[:-3] + b"\xff\xfe\"}]}") == 400  # invalid UTF-8
    assert raw(json.dumps({"model": "m", "messages": prompt}).encode()) == 400  # wrong type
    assert raw(json.dumps({"model": "m", "messages": [{"role": prompt, "content": "x"}]})
               .encode()) == 400
    assert raw(json.dumps({"model": "m", "messages": [
        {"role": "user", "content": prompt * 200}]}).encode()) == 413
    assert raw(full.encode(), headers={"Authorization": f"Bearer {c.api_key}"}) == 401
    assert raw(full.encode(), headers={"X-Request-ID": c.api_key}) == 200
    assert raw(full.encode(), path=f"/v1/chat/completions?user={c.email}") == 200
    assert httpx.get(w.url + f"/v1/{c.email}", headers=auth).status_code == 404
    assert raw(full.replace('"m"', '"echo-400"').encode()) == 400  # upstream echoes prompt
    assert raw(full.replace('"m"', '"echo-500"').encode()) == 502
    with httpx.stream("POST", w.url + "/v1/chat/completions", headers=auth, json={
            "model": "dying", "stream": True,
            "messages": [{"role": "user", "content": prompt}]}) as r:
        assert "stream_interrupted" in r.read().decode()
    reload_policies(w, raw, full.encode())


def drive_every_field(w: World, oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    """Canaries in the fields beyond message text: tools, metadata, documents, stored
    responses read back and continued, token counting, headers, attachments."""
    c, prompt = w.canaries, w.canaries.prompt()
    oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi", "name": c.name}],
        user=c.email, metadata={c.email: c.phone}, stop=[c.ssn],
        tools=[{"type": "function", "function": {
            "name": "lookup", "description": prompt,
            "parameters": {"type": "object", "properties": {
                "who": {"type": "string", "description": c.email, "enum": [c.name]}}}}}])
    document = {"type": "document", "title": c.name, "context": c.email,
                "source": {"type": "text", "media_type": "text/plain", "data": prompt}}
    claude.messages.count_tokens(model="m", messages=[{"role": "user", "content": [document]}])
    claude.messages.create(model="m", max_tokens=64, metadata={"user_id": c.email},
                           messages=[{"role": "user", "content": [document]}])
    first = oai.responses.create(model="m", input=prompt, instructions=f"For {c.name}",
                                 metadata={"owner": c.email})
    oai.responses.retrieve(first.id)
    oai.responses.input_items.list(first.id)
    second = oai.responses.create(model="m", input=f"And {c.iban}?",
                                  previous_response_id=first.id)
    oai.responses.delete(second.id)
    image = {"type": "image_url", "image_url": {"url": f"https://x.test/{c.email}.png"}}
    with pytest.raises(openai.BadRequestError):  # attachments refused by default
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "text", "text": prompt}, image]}])
    with pytest.raises(anthropic.BadRequestError):  # free text in a header
        claude.messages.create(model="m", max_tokens=8, messages=[
            {"role": "user", "content": "hi"}], extra_headers={"anthropic-beta": c.email})


def reload_policies(w: World, raw: Callable[[bytes], int], request: bytes) -> None:
    """A broken edit whose errors quote canaries (SIGHUP: refused, the old policy stays), then
    a valid one (picked up by the watcher), with canary traffic around both."""
    c = w.canaries
    before = httpx.post(w.url + "/v1/chat/completions", content=request, headers={
        "Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"})
    broken = json.dumps(leak_policy(c)).replace('"SECRET"', json.dumps(c.email)) \
        .replace('"version": 1', f'"version": 1, "{c.api_key}": "{c.card}"')
    w.policy.write_text(broken)
    os.kill(w.pid, signal.SIGHUP)
    wait_for(w.log, b"policy_reload_failed")
    assert raw(request) == 200
    w.policy.write_text(json.dumps(leak_policy(c, EMAIL="redact")))
    wait_for(w.log, b"policy_reloaded")
    after = httpx.post(w.url + "/v1/chat/completions", content=request, headers={
        "Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"})
    assert after.status_code == 200
    assert after.headers["X-Veil-Policy"] != before.headers["X-Veil-Policy"]


def wait_for(log: Path, marker: bytes, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while marker not in log.read_bytes():
        assert time.monotonic() < deadline, f"{marker!r} never logged"
        time.sleep(0.1)


def test_no_canary_leaks_anywhere(world: World) -> None:
    drive_every_path(world)
    time.sleep(0.5)  # let the gateway flush its last lines (and export its last spans)
    outputs: dict[str, bytes] = {
        "gateway log": world.log.read_bytes(),
        "audit trail": world.audit.read_bytes(),
        "metrics page": httpx.get(world.url + "/metrics").content,
        "exported spans": b"".join(world.traces.bodies),  # OTLP protobuf: strings as UTF-8
    }
    assert len(world.traces.bodies) >= 1
    for i, bodies in enumerate(world.upstream_bodies):
        outputs[f"upstream {i} bodies"] = b"\n".join(bodies)
    assert len(outputs["gateway log"].splitlines()) > 20  # DEBUG output really was produced
    assert sum(len(b) for b in world.upstream_bodies) >= 10
    leaks = [f"{kind} ({form!r}) in {where}"
             for kind, value in world.canaries.values().items()
             for form in encodings(value)
             for where, data in outputs.items() if form.encode() in data]
    assert leaks == []


def test_audit_trail_verifies_and_an_edited_copy_fails(world: World, tmp_path: Path) -> None:
    def verify(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", str(path),
                               "--key-file", str(world.audit_key)], capture_output=True,
                              text=True, cwd=ROOT, check=False)

    httpx.post(world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {TEST_KEY}"},
               json={"model": "m", "messages": [{"role": "user", "content": "hello"}]})
    time.sleep(0.2)
    ok = verify(world.audit)
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.startswith("ok: ")
    records = [json.loads(line) for line in world.audit.read_text().splitlines()]
    last = records[-1]
    assert last["decision"] == "forwarded"
    assert last["backend"] == "demo"
    assert last["policy"].startswith("sha256:")
    assert {"ingress", "detect", "mask", "upstream", "relay", "total"} <= set(last["latency_ms"])
    edited = tmp_path / "edited.jsonl"
    lines = world.audit.read_text().splitlines()
    lines[1] = lines[1].replace('"status":', '"status":1')
    edited.write_text("\n".join(lines) + "\n")
    broken = verify(edited)
    assert broken.returncode == 1
    assert f"{edited}:2: MAC mismatch" in broken.stdout
