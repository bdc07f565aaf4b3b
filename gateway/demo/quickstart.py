"""`veil quickstart` (what `make run` runs): the demo model server and the gateway side by side,
with instructions a newcomer can paste."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from gateway.ingress.auth import hash_api_key
from gateway.settings import load_settings

DEMO_API_KEY = "veil-demo-key-local-only"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (loopback URL)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait(url: str, processes: list[subprocess.Popen[bytes]], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            return False
        if _healthy(url):
            return True
        time.sleep(0.2)
    return False


def _ensure_key(path: Path) -> None:
    """A demo secret (the audit key, the FHE master key): random, created once, readable by
    this user only."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))


def quickstart(config: str, demo_port: int) -> int:
    settings = load_settings(config)  # fail fast with the config error, before starting anything
    for key_file in (settings.audit.key_file, settings.fhe.master_key_file):
        if key_file:  # relative to the config's folder, where `veil serve` will look
            Path(key_file).parent.mkdir(parents=True, exist_ok=True)
            _ensure_key(Path(key_file))
    veil = [sys.executable, "-m", "gateway"]
    # Our own interpreter and module with fixed arguments: nothing here comes from a client.
    demo = subprocess.Popen([*veil, "demo-upstream", "--port", str(demo_port),  # noqa: S603
                             "--chunk-delay-ms", "15"])
    gateway = subprocess.Popen([*veil, "serve", "--config", config])  # noqa: S603
    processes = [demo, gateway]

    def stop(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = settings.listen.host, settings.listen.port
    base = f"http://{host}:{port}"
    demo_url = f"http://127.0.0.1:{demo_port}"
    if not (_wait(demo_url + "/v1/models", processes) and _wait(base + "/healthz", processes)):
        stop()
        print("veil: the demo server or the gateway did not start; see the log above.",
              file=sys.stderr)
        return 1
    demo_key_configured = any(k.hash == hash_api_key(DEMO_API_KEY) for k in settings.api_keys)
    key = DEMO_API_KEY if demo_key_configured else "<your API key>"
    model = next(iter(settings.models), "<model>")
    print(_banner(base, demo_url, key, model, config), flush=True)
    while all(p.poll() is None for p in processes):
        time.sleep(0.5)
    stop()
    for process in processes:
        process.wait(timeout=15)
    return 0


def _banner(base: str, demo_url: str, key: str, model: str, config: str) -> str:
    body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello, Veil"}}]}}'
    stream_body = body[:-1] + ', "stream": true}'
    return f"""
================================================================================
 Veil is running
   gateway     {base}   (config: {config})
   demo model  {demo_url}
   API key     {key}

 Try it with curl:
   curl -s {base}/v1/chat/completions \\
     -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
     -d '{body}'

 Stream it:
   curl -sN {base}/v1/chat/completions \\
     -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
     -d '{stream_body}'

 With the openai SDK (pip install openai):
   from openai import OpenAI
   client = OpenAI(base_url="{base}/v1", api_key="{key}")
   for chunk in client.chat.completions.create(model="{model}", stream=True,
           messages=[{{"role": "user", "content": "Hello"}}]):
       print(chunk.choices[0].delta.content or "", end="", flush=True)

 What left your perimeter (the last body the model received):
   curl -s {demo_url}/_demo/last

 The audit trail (one hash-chained record per request, never a value):
   .venv/bin/veil audit verify var/audit.jsonl --key-file var/audit.key

 Ctrl-C stops both.
================================================================================
"""
