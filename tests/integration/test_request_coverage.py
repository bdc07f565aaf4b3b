"""What the gateway does with every part of a request, through the running gateway with raw
HTTP: fields of the wrong type, attachments, unknown fields, protocol headers, placeholders
the client typed, tool arguments that must stay JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from gateway.demo.upstream import DEMO, build_demo_app
from gateway.ingress.middleware import AUDITED_ROUTES, UNAUDITED_ROUTES
from tests.servers import TEST_KEY, UPSTREAM_SECRET, ServerThread, demo_gateway

EMAIL = "rosalind.franklin@example.org"
CARD = 4539148803436467
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


@pytest.fixture(scope="module")
def demo() -> Iterator[ServerThread]:
    with ServerThread(build_demo_app(required_key=UPSTREAM_SECRET)) as server:
        yield server


def _gateway(demo: ServerThread, tmp: Path | None = None, **policy: Any) -> ServerThread:
    extra: dict[str, Any] = {}
    if tmp is not None:
        (tmp / "audit.key").write_text("k" * 64)
        extra["audit"] = {"enabled": True, "path": str(tmp / "audit.jsonl"),
                          "key_file": str(tmp / "audit.key")}
    return demo_gateway(demo.url, policy={
        "version": 1, "name": "coverage", "detectors": {"builtin": ["patterns"]}, **policy},
        **extra)


@pytest.fixture(scope="module")
def gateway(demo: ServerThread) -> Iterator[ServerThread]:
    with _gateway(demo) as server:
        yield server


def post(gateway: ServerThread, path: str, body: dict[str, Any],
         headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(gateway.url + path, content=json.dumps(body),
                      headers={**AUTH, "Content-Type": "application/json", **(headers or {})})


def last_sent(demo: ServerThread) -> Any:
    return demo.app[DEMO].last_body


CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("path", "body", "param"), [
    (CHAT, {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"to": EMAIL}}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    (CHAT, {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": f"send({EMAIL})"}]}]},
     "messages[0].tool_calls[0].function"),
    (CHAT, {"messages": [{"role": "user", "content": {"text": EMAIL}}]}, "messages[0].content"),
    ("/v1/responses", {"input": "x", "instructions": [EMAIL]}, "instructions"),
    (MESSAGES, {"max_tokens": 5, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": json.dumps({"to": EMAIL})}]}]},
     "messages[0].content[0].input"),
    (MESSAGES, {"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": {"text": EMAIL}}]}]},
     "messages[0].content[0].content"),
])
def test_a_data_field_of_the_wrong_type_is_a_400_naming_it(
        gateway: ServerThread, demo: ServerThread, path: str, body: dict[str, Any],
        param: str) -> None:
    before = len(demo.app[DEMO].received)
    r = post(gateway, path, {"model": "test-model", **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert EMAIL not in r.text
    assert len(demo.app[DEMO].received) == before  # nothing was forwarded


def test_numbers_keys_and_documents_are_masked(gateway: ServerThread, demo: ServerThread) -> None:
    """A card as a JSON integer in tool input, an email as an object key, a RAG document."""
    r = post(gateway, MESSAGES, {"model": "test-model", "max_tokens": 16, "messages": [
        {"role": "user", "content": [
            {"type": "document", "title": f"Letter to {EMAIL}", "context": f"cc {EMAIL}",
             "source": {"type": "text", "media_type": "text/plain", "data": f"Dear {EMAIL}"}},
            {"type": "search_result", "source": f"mailto:{EMAIL}", "title": "t",
             "content": [{"type": "text", "text": f"found {EMAIL}"}]}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "pay",
                                           "input": {"card": CARD, EMAIL: "owner"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "ok"}]}],
        "metadata": {"user_id": EMAIL}, "stop_sequences": [EMAIL]})
    assert r.status_code == 200, r.text
    sent = json.dumps(last_sent(demo))
    assert EMAIL not in sent
    assert str(CARD) not in sent
    tool_input = last_sent(demo)["messages"][1]["content"][0]["input"]
    assert tool_input == {"card": "<CREDIT_CARD_1>", "<EMAIL_1>": "owner"}


def test_tool_arguments_stay_valid_json_with_every_key(gateway: ServerThread,
                                                       demo: ServerThread) -> None:
    arguments = json.dumps({"to": EMAIL, "note": 'she said "hi" \\o/', "n": CARD,
                            "nested": {"cc": [EMAIL, "plain"]}})
    r = post(gateway, CHAT, {"model": "test-model", "messages": [
        *USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "send", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"sent_to": EMAIL})}]})
    assert r.status_code == 200, r.text
    sent = last_sent(demo)["messages"]
    masked = json.loads(sent[1]["tool_calls"][0]["function"]["arguments"])
    assert masked == {"to": "<EMAIL_1>", "note": 'she said "hi" \\o/', "n": "<CREDIT_CARD_1>",
                      "nested": {"cc": ["<EMAIL_1>", "plain"]}}
    assert json.loads(sent[2]["content"]) == {"sent_to": "<EMAIL_1>"}


def test_secrets_and_duplicate_keys_in_tool_json_do_not_pass(gateway: ServerThread,
                                                             demo: ServerThread) -> None:
    """A password is a secret by its key (`password: ...`); a duplicated key cannot carry text
    past a scan that parsed only the last one."""
    arguments = ('{"user": "svc", "password": "Tr0ub4dor&3xyz", '
                 f'"to": "{EMAIL}", "to": "x"}}')
    r = post(gateway, CHAT, {"model": "test-model", "messages": [
        *USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "login", "arguments": arguments}}]}]})
    assert r.status_code == 200, r.text
    sent = last_sent(demo)["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert "Tr0ub4dor" not in sent
    assert EMAIL not in sent
    assert json.loads(sent)["to"] == "x"


def test_placeholders_the_client_typed_come_back_as_typed(gateway: ServerThread,
                                                          demo: ServerThread) -> None:
    prompt = f"Template: Dear <EMAIL_1>, ... Fill it for {EMAIL}."
    r = post(gateway, CHAT, {"model": "test-model",
                             "messages": [{"role": "user", "content": prompt}]})
    assert last_sent(demo)["messages"][0]["content"] == \
        "Template: Dear <EMAIL_1>, ... Fill it for <EMAIL_2>."
    reply = r.json()["choices"][0]["message"]["content"]
    assert reply.endswith(prompt)  # the demo echoes: <EMAIL_1> stayed the client's text


def test_attachments_are_refused_by_default(gateway: ServerThread) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}
    r = post(gateway, CHAT, {"model": "test-model", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "attachment_refused"
    assert error["param"] == "messages[0].content[1].image_url"


def test_forwarded_attachments_are_counted_in_the_audit_record(demo: ServerThread,
                                                               tmp_path: Path) -> None:
    with _gateway(demo, tmp_path, attachments="forward") as gateway:
        r = post(gateway, MESSAGES, {"model": "test-model", "max_tokens": 5, "messages": [
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0K"}},
                {"type": "document", "source": {"type": "base64",
                                                "media_type": "application/pdf",
                                                "data": "JVBERi0"}},
                {"type": "text", "text": f"from {EMAIL}"}]}]})
        assert r.status_code == 200, r.text
    record = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert record["attachments_unscanned"] == {"document": 1, "image": 1}


def test_a_blocked_request_is_audited_with_its_rule_and_entities(demo: ServerThread,
                                                                 tmp_path: Path) -> None:
    with _gateway(demo, tmp_path, actions={"EMAIL": "block"}) as gateway:
        r = post(gateway, CHAT, {"model": "test-model",
                                 "messages": [{"role": "user", "content": f"mail {EMAIL}"}]})
        assert r.status_code == 400
    record = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert record["decision"] == "blocked"
    assert record["entities"] == {"EMAIL": 1}
    assert record["rule"]
    assert EMAIL not in json.dumps(record)


def test_every_route_but_probes_is_audited(demo: ServerThread) -> None:
    with _gateway(demo) as gateway:
        names = {route.name for route in gateway.app.router.routes() if route.name}
    assert names - UNAUDITED_ROUTES <= AUDITED_ROUTES, names - AUDITED_ROUTES
    assert names >= UNAUDITED_ROUTES


def test_unknown_fields_can_be_refused_by_policy(demo: ServerThread) -> None:
    with _gateway(demo, unknown_fields="refuse") as gateway:
        r = post(gateway, CHAT, {"model": "test-model", "messages": USER, "top_k": 40})
        assert r.status_code == 400
        assert r.json()["error"] | {"message": ""} == {
            "message": "", "type": "invalid_request_error", "param": "top_k",
            "code": "unknown_field", "request_id": r.headers["X-Request-ID"]}
        known = post(gateway, CHAT, {"model": "test-model", "messages": USER,
                                     "temperature": 0.1})
        assert known.status_code == 200


@pytest.mark.parametrize(("headers", "status"), [
    ({"anthropic-beta": "prompt-caching-2024-07-31,files-api-2025-04-14"}, 200),
    ({"anthropic-beta": f"contact {EMAIL}"}, 400),
    ({"anthropic-beta": "made-up-beta-2030-01-01"}, 400),
    ({"anthropic-version": "2023-06-01"}, 200),
    ({"anthropic-version": f"2023-06-01 {EMAIL}"}, 400),
])
def test_anthropic_headers_are_checked_against_their_vocabulary(
        gateway: ServerThread, demo: ServerThread, headers: dict[str, str], status: int) -> None:
    r = post(gateway, MESSAGES, {"model": "test-model", "max_tokens": 5, "messages": USER},
             headers)
    assert r.status_code == status, r.text
    if status == 200:
        sent = demo.app[DEMO].last_headers
        for name, value in headers.items():
            assert sent[name] == value
    else:
        assert r.json()["error"]["code"] == "header_not_allowed"
        assert EMAIL not in r.text


def test_openai_beta_header_is_checked(gateway: ServerThread) -> None:
    bad = post(gateway, CHAT, {"model": "test-model", "messages": USER},
               {"OpenAI-Beta": f"note={EMAIL}"})
    assert bad.status_code == 400
    assert post(gateway, CHAT, {"model": "test-model", "messages": USER},
                {"OpenAI-Beta": "assistants=v2"}).status_code == 200


def test_operators_can_allow_more_betas(demo: ServerThread) -> None:
    with demo_gateway(demo.url, privacy={"allowed_betas": ["shiny-new-2031-01-01"]}) as gateway:
        r = post(gateway, MESSAGES, {"model": "test-model", "max_tokens": 5, "messages": USER},
                 {"anthropic-beta": "shiny-new-2031-01-01"})
        assert r.status_code == 200, r.text
