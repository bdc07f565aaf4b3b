"""OpenAI's Conversations API through real gateways with the official SDK: a conversation's
placeholders keep their meaning across every request into it, on any replica sharing Redis;
new values never share a placeholder, even when requests race; another tenant finds nothing;
a vault that cannot be reached refuses before anything is forwarded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx2 as httpx
import openai
import pytest
import redis

from gateway.ingress.auth import hash_api_key
from tests.conftest import Demo
from tests.integration.test_shared_state import VAULT_SECRET, redis_server  # noqa: F401
from tests.redis_server import RedisServer
from tests.servers import (
    OTHER_KEY,
    TEST_KEY,
    UPSTREAM_SECRET,
    ServerThread,
    demo_backend,
    gateway_for,
    settings_for,
)

JOHN = "john.smith@example.com"
ALICE = "alice.jones@example.org"
USER = {"type": "message", "role": "user"}


@contextmanager
def gateways(demo_url: str, count: int = 1, redis_url: str | None = None,
             **routing: Any) -> Iterator[list[openai.OpenAI]]:
    state = {"redis_url": redis_url, "timeout_s": 0.5, "vault_key_env": "VEIL_VAULT_KEY"} \
        if redis_url else {}
    settings = settings_for(
        [demo_backend("demo", demo_url)], routing={"conversations_model": "test-model",
                                                   **routing},
        tenants={"test": {"models": ["*"]}, "other": {"models": ["*"]}},
        api_keys=[{"name": "test-key", "tenant": "test", "hash": hash_api_key(TEST_KEY)},
                  {"name": "other-key", "tenant": "other", "hash": hash_api_key(OTHER_KEY)}],
        state=state)
    environ = {"DEMO_KEY": UPSTREAM_SECRET, "VEIL_VAULT_KEY": VAULT_SECRET}
    with ExitStack() as stack:
        yield [client(stack.enter_context(gateway_for(settings, environ=environ)))
               for _ in range(count)]


def client(gateway: ServerThread, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def other_tenant(oai: openai.OpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=str(oai.base_url), api_key=OTHER_KEY, max_retries=0)


def everything_sent(demo: Demo) -> str:
    return b"\n".join(demo.state.received).decode()


def item_texts(oai: openai.OpenAI, conversation_id: str) -> list[str]:
    page = oai.conversations.items.list(conversation_id, order="asc")
    return [" ".join(getattr(part, "text", "") for part in item.content)  # type: ignore[union-attr]
            for item in page.data]


def test_placeholders_keep_their_meaning_across_a_conversation(demo: Demo) -> None:
    with gateways(demo.url) as [oai]:
        conversation = oai.conversations.create(
            items=[{**USER, "content": f"My address is {JOHN}"}], metadata={"topic": "mail"})
        assert JOHN not in everything_sent(demo)
        reply = oai.responses.create(model="test-model", conversation=conversation.id,
                                     input=f"Now write to {ALICE}")
        # turn 1 is <EMAIL_1> upstream, so the new address must be <EMAIL_2>
        assert demo.state.last_body["input"] == "Now write to <EMAIL_2>"
        assert reply.output_text.endswith(f"(conversation so far: My address is {JOHN})")
        assert ALICE in reply.output_text
        streamed = oai.responses.create(model="test-model", conversation=conversation.id,
                                        input=f"And to {JOHN} again", stream=True)
        done = next(e for e in streamed if e.type == "response.completed")
        assert demo.state.last_body["input"] == "And to <EMAIL_1> again"
        assert f"Last user message: And to {JOHN} again" in done.response.output_text
        texts = item_texts(oai, conversation.id)
        assert texts[0] == f"My address is {JOHN}"
        assert texts[1] == f"Now write to {ALICE}"
        assert JOHN not in everything_sent(demo)
        assert ALICE not in everything_sent(demo)
        added = oai.conversations.items.create(conversation.id, items=[
            {**USER, "content": "Copy grace@example.net and " + ALICE}])
        assert demo.state.last_body["items"][0]["content"] == "Copy <EMAIL_3> and <EMAIL_2>"
        assert added.data[0].content[0].text == "Copy grace@example.net and " + ALICE  # type: ignore[union-attr]
        one = oai.conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id)
        assert "grace@example.net" in one.content[0].text  # type: ignore[union-attr]
        assert oai.conversations.retrieve(conversation.id).metadata == {"topic": "mail"}


def test_another_tenant_finds_nothing_and_deleted_is_gone(demo: Demo) -> None:
    with gateways(demo.url) as [oai]:
        conversation = oai.conversations.create(items=[{**USER, "content": JOHN}])
        stranger = other_tenant(oai)
        sent = len(demo.state.received)
        with pytest.raises(openai.NotFoundError):
            stranger.conversations.retrieve(conversation.id)
        with pytest.raises(openai.NotFoundError):
            stranger.conversations.items.list(conversation.id)
        with pytest.raises(openai.NotFoundError):
            stranger.responses.create(model="test-model", conversation=conversation.id,
                                      input="what did they say?")
        with pytest.raises(openai.NotFoundError):  # made upstream, not through the gateway
            oai.conversations.retrieve("conv_demo00000099")
        assert len(demo.state.received) == sent  # nothing forwarded for any of them
        assert oai.conversations.delete(conversation.id).deleted
        with pytest.raises(openai.NotFoundError):
            oai.conversations.items.list(conversation.id)


def test_turns_on_different_replicas_restore_right(demo: Demo,
                                                   redis_server: RedisServer) -> None:  # noqa: F811
    with gateways(demo.url, 3, redis_server.url) as [a, b, c]:
        conversation = a.conversations.create(items=[{**USER, "content": f"I am {JOHN}"}])
        b.responses.create(model="test-model", conversation={"id": conversation.id},
                           input=f"Write to {ALICE}")
        assert demo.state.last_body["input"] == "Write to <EMAIL_2>"
        assert item_texts(c, conversation.id)[:2] == [f"I am {JOHN}", f"Write to {ALICE}"]
        with pytest.raises(openai.NotFoundError):
            other_tenant(c).conversations.retrieve(conversation.id)
    store = redis.Redis.from_url(redis_server.url, decode_responses=True)
    names = [str(name) for name in store.keys("veil:conversation:*")]
    assert len(names) == 1
    record = json.dumps(store.hgetall(names[0]))
    store.close()
    assert conversation.id not in names[0]
    assert JOHN not in record
    assert "john" not in record


def test_requests_racing_into_one_conversation_never_share_a_placeholder(
        demo: Demo, redis_server: RedisServer) -> None:  # noqa: F811
    with gateways(demo.url, 2, redis_server.url) as replicas:
        conversation = replicas[0].conversations.create(items=[{**USER, "content": JOHN}])
        addresses = [f"user{i}@example.org" for i in range(6)]

        def send(i: int) -> str:
            oai = replicas[i % 2]
            return oai.responses.create(model="test-model", conversation=conversation.id,
                                        input=f"Write to {addresses[i]}").output_text

        with ThreadPoolExecutor(len(addresses)) as pool:
            replies = list(pool.map(send, range(len(addresses))))
    for address, reply in zip(addresses, replies, strict=True):
        assert f"Last user message: Write to {address} " in reply + " "
    bodies = [json.loads(raw) for raw in demo.state.received]
    placeholders = [b["input"].removeprefix("Write to ") for b in bodies
                    if str(b.get("input", "")).startswith("Write to ")]
    assert len(placeholders) == len(addresses)
    assert len(set(placeholders)) == len(addresses)  # six values, six placeholders
    assert "<EMAIL_1>" not in placeholders  # John's


def test_a_vault_that_cannot_be_reached_refuses_before_forwarding(
        demo: Demo, redis_server: RedisServer) -> None:  # noqa: F811
    with gateways(demo.url, 1, redis_server.url) as [oai]:
        conversation = oai.conversations.create(items=[{**USER, "content": JOHN}])
        redis_server.stop()
        sent = len(demo.state.received)
        for call in (lambda: oai.responses.create(model="test-model", input=ALICE,
                                                  conversation=conversation.id),
                     lambda: oai.conversations.items.list(conversation.id),
                     lambda: oai.conversations.create(items=[{**USER, "content": ALICE}])):
            with pytest.raises(openai.InternalServerError) as refused:
                call()
            assert refused.value.code == "vault_unavailable"
        # a create reached the upstream (it cannot be recorded after); nothing else did
        assert len(demo.state.received) == sent + 1
        redis_server.start()  # an empty Redis: the record is gone, so: not found, not wrong
        with pytest.raises(openai.NotFoundError):
            oai.responses.create(model="test-model", conversation=conversation.id, input="hi")


def test_without_a_conversations_model_they_are_refused(gateway: ServerThread) -> None:
    oai = client(gateway)
    with pytest.raises(openai.BadRequestError, match="conversations_model"):
        oai.conversations.create(items=[{**USER, "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="conversations_model"):
        oai.responses.create(model="test-model", input="hi", conversation="conv_123")
    answer = httpx.get(gateway.url + "/v1/conversations/conv_123",
                       headers={"Authorization": f"Bearer {TEST_KEY}"})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "conversations_disabled"


@pytest.mark.parametrize("planted", [{"v": "1", "r": "not json"}, {"v": "1", "r": "[1]"},
                                     {"v": "1", "r": '{"backend": "demo", "sealed": "00"}'},
                                     {"v": "1", "r": b"\xff\xfe"}, {"r": "{}"}])
def test_a_record_planted_in_redis_is_not_found_never_an_error(
        planted: dict[str, Any], demo: Demo, redis_server: RedisServer) -> None:  # noqa: F811
    with gateways(demo.url, 1, redis_server.url) as [oai]:
        conversation = oai.conversations.create(items=[{**USER, "content": JOHN}])
        store = redis.Redis.from_url(redis_server.url)
        for name in store.scan_iter("veil:conversation:*"):
            store.delete(name)
            store.hset(name, mapping=planted)
        store.close()
        with pytest.raises(openai.NotFoundError):
            oai.conversations.items.list(conversation.id)
        with pytest.raises(openai.NotFoundError):
            oai.responses.create(model="test-model", conversation=conversation.id, input="hi")
