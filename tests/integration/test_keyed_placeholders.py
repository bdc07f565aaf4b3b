"""Embeddings through real gateways: with the tenant's pseudonym key, different people get
different vectors and the same person the same vector, in every request and on every replica
holding the key; the upstream never sees a name. Without a key: numbered, as before."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx2 as httpx
import openai
import pytest

from gateway.demo.upstream import build_demo_app
from tests.servers import (
    TEST_KEY,
    UPSTREAM_SECRET,
    ServerThread,
    demo_backend,
    gateway_for,
    settings_for,
)

HASHED = {"DEMO_KEY": UPSTREAM_SECRET, "VEIL_HASH_KEY": "h" * 32}
POLICY = {"version": 1, "name": "retrieval", "detectors": {"builtin": ["patterns", "presidio"]}}


@contextmanager
def replicas(count: int, environ: dict[str, str]) -> Iterator[tuple[list[openai.OpenAI], str]]:
    with ExitStack() as stack:
        demo = stack.enter_context(ServerThread(build_demo_app(required_key=UPSTREAM_SECRET)))
        privacy = {"hash_key_env": "VEIL_HASH_KEY"} if "VEIL_HASH_KEY" in environ else {}
        settings = settings_for([demo_backend("demo", demo.url)], policy=POLICY,
                                privacy=privacy)
        clients = [openai.OpenAI(base_url=stack.enter_context(gateway_for(
            settings, environ=environ)).url + "/v1", api_key=TEST_KEY, max_retries=0)
            for _ in range(count)]
        yield clients, demo.url


def vector(client: openai.OpenAI, text: str) -> list[float]:
    return client.embeddings.create(model="test-model", input=text).data[0].embedding


def sent(demo_url: str) -> str:
    return json.dumps(httpx.get(demo_url + "/_demo/last").json())


def test_different_people_stay_different_and_the_same_person_matches_across_replicas(
        ) -> None:
    with replicas(2, HASHED) as ([one, two], demo_url):
        john = vector(one, "Dr. John Smith lives in Paris.")
        assert "John" not in sent(demo_url)
        alice = vector(one, "Dr. Alice Jones lives in Paris.")
        assert "Alice" not in sent(demo_url)
        assert john != alice
        assert vector(two, "Dr. John Smith lives in Paris.") == john  # another replica
        assert vector(one, "Dr. JOHN SMITH lives in Paris.") == john  # however it is cased


def test_without_a_key_placeholders_stay_numbered() -> None:
    with replicas(1, {"DEMO_KEY": UPSTREAM_SECRET}) as ([client], demo_url):
        john = vector(client, "Dr. John Smith lives in Paris.")
        assert "<PERSON_1>" in sent(demo_url)
        assert vector(client, "Dr. Alice Jones lives in Paris.") == john


@pytest.mark.parametrize("stream", [False, True])
def test_chat_keeps_numbered_placeholders_and_restores(stream: bool) -> None:
    with replicas(1, HASHED) as ([client], demo_url):
        kwargs = {"model": "test-model",
                  "messages": [{"role": "user", "content": "Dr. John Smith lives in Paris."}]}
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in
                           client.chat.completions.create(**kwargs, stream=True)
                           if c.choices)
        else:
            text = client.chat.completions.create(**kwargs).choices[0].message.content or ""
        assert "<PERSON_1>" in sent(demo_url)
        assert "John Smith" in text
