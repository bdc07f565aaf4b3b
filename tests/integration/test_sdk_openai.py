"""The official openai SDK (sync, async, streaming) through the real gateway to the demo server."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.conftest import Demo
from tests.servers import OTHER_KEY, TEST_KEY, ServerThread


def client(gateway: ServerThread, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def test_chat_sync(gateway: ServerThread, demo: Demo) -> None:
    reply = client(gateway).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Hello gateway"}])
    assert reply.choices[0].message.content == \
        "Demo model received 1 messages. Last user message: Hello gateway"
    assert demo.state.last_body["messages"] == [{"role": "user", "content": "Hello gateway"}]


def test_chat_stream_arrives_in_chunks(gateway: ServerThread) -> None:
    stream = client(gateway).chat.completions.create(
        model="test-model", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Stream please"}]}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Demo model received 2 messages. Last user message: Stream please"
    assert len(chunks) > 5  # relayed event by event, not as one block
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0


async def test_chat_async_concurrent(gateway: ServerThread) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY,
                                  max_retries=0) as aclient:
        replies = await asyncio.gather(*[
            aclient.chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": f"request {i}"}])
            for i in range(10)])
    assert [r.choices[0].message.content.rsplit(" ", 1)[-1] for r in replies] == \
        [str(i) for i in range(10)]


async def test_chat_async_stream(gateway: ServerThread) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY,
                                  max_retries=0) as aclient:
        stream = await aclient.chat.completions.create(
            model="test-model", stream=True, messages=[{"role": "user", "content": "async"}])
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text.endswith("Last user message: async")


def test_tool_call_stream(gateway: ServerThread) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"echo": {"type": "string"}}}}}]
    with client(gateway).chat.completions.stream(
            model="test-model", tools=tools,
            messages=[{"role": "user", "content": "find it"}]) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup"
    assert call.function.arguments == '{"echo": "find it"}'


def test_completions_embeddings_responses(gateway: ServerThread, demo: Demo) -> None:
    c = client(gateway)
    completion = c.completions.create(model="test-model", prompt="Complete me")
    assert completion.choices[0].text == "Demo model received a prompt: Complete me"
    streamed = "".join(ch.choices[0].text for ch in
                       c.completions.create(model="test-model", prompt="Go", stream=True))
    assert streamed == "Demo model received a prompt: Go"

    embedding = c.embeddings.create(model="test-model", input=["one", "two"])
    assert len(embedding.data) == 2
    assert len(embedding.data[0].embedding) == 16
    assert demo.state.last_body["input"] == ["one", "two"]

    response = c.responses.create(model="test-model", input="Respond")
    assert response.output_text == "Demo model received input. Last user message: Respond"
    events = list(c.responses.create(model="test-model", input="Stream it", stream=True))
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas.endswith("Stream it")


def test_models_lists_only_what_the_tenant_may_use(gateway: ServerThread) -> None:
    assert sorted(m.id for m in client(gateway).models.list()) == ["other-model", "test-model"]
    assert [m.id for m in client(gateway, OTHER_KEY).models.list()] == ["other-model"]
    with pytest.raises(openai.NotFoundError):
        client(gateway, OTHER_KEY).chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "x"}])


def test_upstream_gets_gateway_credential_never_the_clients(gateway: ServerThread,
                                                            demo: Demo) -> None:
    client(gateway).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "x"}],
        extra_headers={"Cookie": "session=abc", "X-Forwarded-Host": "evil.example",
                       "Connection": "keep-alive, X-Secret", "X-Secret": "hop",
                       "Proxy-Authorization": "Basic abc"})
    headers = demo.state.last_headers
    assert headers["authorization"] == "Bearer upstream-secret"
    assert TEST_KEY not in str(headers)
    for name in ("cookie", "x-forwarded-host", "x-secret", "proxy-authorization"):
        assert name not in headers
    assert headers["x-veil-request-id"].startswith("req_")
    assert "x-request-id" not in headers


def test_authentication_errors_raise_sdk_errors(gateway: ServerThread) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        client(gateway, "wrong-key").chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "invalid_api_key"
