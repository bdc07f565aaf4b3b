"""Masking through the real gateway with the official SDKs: the model (the demo server) never
receives an original value; the client gets its own values back, streamed or not, across turns
and inside tool-call arguments."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
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

NAME, EMAIL, CARD = "Margaret Thornbury", "margaret.thornbury@example.org", "4111 1111 1111 1111"
PHONE, KEY = "+44 20 7946 0958", "sk-proj-Zx8Qw3Er5Ty7Ui9Op1As2Df4Gh6Jk8Lz0Xc"
PROMPT = f"My name is {NAME}, email {EMAIL}, card {CARD}, phone {PHONE}, key {KEY}."
ORIGINALS = (NAME, EMAIL, CARD, PHONE, KEY)


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[ServerThread, ServerThread]]:
    with ServerThread(build_demo_app(required_key=UPSTREAM_SECRET)) as demo:
        settings = settings_for(
            [demo_backend("o", demo.url), demo_backend("a", demo.url, "anthropic")],
            policy={"version": 1, "name": "masking", "actions": {"SECRET": "redact"},
                    "detectors": {"builtin": ["patterns", "presidio"]}})
        with gateway_for(settings) as gw:
            yield gw, demo


def sent_upstream(demo: ServerThread) -> str:
    return json.dumps(httpx.get(demo.url + "/_demo/last").json())


def assert_masked(demo: ServerThread) -> str:
    body = sent_upstream(demo)
    for value in ORIGINALS:
        assert value not in body
    assert "<PERSON_1>" in body
    assert "<EMAIL_1>" in body
    assert "[REDACTED:SECRET]" in body
    return body


def oai(gw: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)


def test_chat_restored_and_never_sent(stack: tuple[ServerThread, ServerThread]) -> None:
    gw, demo = stack
    reply = oai(gw).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": PROMPT}])
    text = reply.choices[0].message.content or ""
    assert_masked(demo)
    for value in (NAME, EMAIL, CARD, PHONE):
        assert value in text  # the client sees its own values
    assert "[REDACTED:SECRET]" in text  # redacted values are not restorable, by design


def test_chat_stream_restored(stack: tuple[ServerThread, ServerThread]) -> None:
    gw, demo = stack
    stream = oai(gw).chat.completions.create(
        model="test-model", stream=True, messages=[{"role": "user", "content": PROMPT}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert_masked(demo)
    assert text.endswith(PROMPT.replace(KEY, "[REDACTED:SECRET]"))


def test_same_value_same_placeholder_across_turns(
        stack: tuple[ServerThread, ServerThread]) -> None:
    gw, demo = stack
    messages = [
        {"role": "system", "content": f"You assist {NAME}."},
        {"role": "user", "content": f"Email {EMAIL} please."},
        {"role": "assistant", "content": f"Done, {NAME}. I wrote to {EMAIL}."},
        {"role": "user", "content": f"Also cc john.smith@example.com and {EMAIL}."},
    ]
    oai(gw).chat.completions.create(model="test-model", messages=messages)
    sent = httpx.get(demo.url + "/_demo/last").json()["messages"]
    assert sent[0]["content"] == "You assist <PERSON_1>."
    assert sent[1]["content"] == "Email <EMAIL_1> please."
    assert sent[2]["content"] == "Done, <PERSON_1>. I wrote to <EMAIL_1>."
    assert sent[3]["content"] == "Also cc <EMAIL_2> and <EMAIL_1>."


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_arguments_restored(stack: tuple[ServerThread, ServerThread],
                                      stream: bool) -> None:
    gw, demo = stack
    tools = [{"type": "function", "function": {"name": "send", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": f"Send it to {EMAIL}"}]
    if stream:
        with oai(gw).chat.completions.stream(model="test-model", tools=tools,
                                             messages=messages) as s:
            final = s.get_final_completion()
    else:
        final = oai(gw).chat.completions.create(model="test-model", tools=tools,
                                                messages=messages)
    arguments = json.loads(final.choices[0].message.tool_calls[0].function.arguments)
    assert arguments == {"echo": f"Send it to {EMAIL}"}
    assert EMAIL not in sent_upstream(demo)


def test_tool_results_and_history_arguments_are_masked(
        stack: tuple[ServerThread, ServerThread]) -> None:
    gw, demo = stack
    oai(gw).chat.completions.create(model="test-model", messages=[
        {"role": "user", "content": "look up the customer"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "c1", "type": "function",
            "function": {"name": "lookup", "arguments": json.dumps({"email": EMAIL})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": f"Customer {NAME}, card {CARD}"},
        {"role": "user", "content": [{"type": "text", "text": f"Thanks. Phone {PHONE}?"}]},
    ])
    body = sent_upstream(demo)
    for value in (NAME, EMAIL, CARD, PHONE):
        assert value not in body


def test_completions_responses_embeddings(stack: tuple[ServerThread, ServerThread]) -> None:
    gw, demo = stack
    c = oai(gw)
    completion = c.completions.create(model="test-model", prompt=PROMPT)
    assert EMAIL in completion.choices[0].text
    assert EMAIL not in sent_upstream(demo)
    streamed = "".join(ch.choices[0].text for ch in
                       c.completions.create(model="test-model", prompt=PROMPT, stream=True))
    assert EMAIL in streamed
    response = c.responses.create(model="test-model", input=PROMPT, instructions=f"For {NAME}")
    assert EMAIL in response.output_text
    assert NAME not in sent_upstream(demo)
    events = list(c.responses.create(model="test-model", input=PROMPT, stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert EMAIL in deltas
    assert EMAIL in events[-1].response.output_text
    c.embeddings.create(model="test-model", input=[PROMPT])
    assert_masked(demo)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_restored(stack: tuple[ServerThread, ServerThread], stream: bool) -> None:
    gw, demo = stack
    claude = anthropic.Anthropic(base_url=gw.url, api_key=TEST_KEY, max_retries=0)
    kwargs = {"model": "test-model", "max_tokens": 64, "system": f"You help {NAME}.",
              "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]}
    if stream:
        with claude.messages.stream(**kwargs) as s:  # type: ignore[arg-type]
            text = "".join(s.text_stream)
    else:
        text = claude.messages.create(**kwargs).content[0].text  # type: ignore[arg-type, union-attr]
    assert EMAIL in text
    assert NAME in text
    assert_masked(demo)


def test_anthropic_tool_use_stream_restored(stack: tuple[ServerThread, ServerThread]) -> None:
    gw, _ = stack
    claude = anthropic.Anthropic(base_url=gw.url, api_key=TEST_KEY, max_retries=0)
    tools = [{"name": "send", "input_schema": {"type": "object"}}]
    with claude.messages.stream(model="test-model", max_tokens=64, tools=tools,  # type: ignore[arg-type]
                                messages=[{"role": "user", "content": f"to {EMAIL}"}]) as s:
        final = s.get_final_message()
    assert final.content[0].input == {"echo": f"to {EMAIL}"}  # type: ignore[union-attr]


def test_legacy_function_call_arguments_are_masked(
        stack: tuple[ServerThread, ServerThread]) -> None:
    gw, demo = stack
    oai(gw).chat.completions.create(model="test-model", messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None,
         "function_call": {"name": "mail", "arguments": json.dumps({"to": EMAIL})}},
        {"role": "function", "name": "mail", "content": "sent"},
    ])
    assert EMAIL not in sent_upstream(demo)
