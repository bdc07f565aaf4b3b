"""The playground's API on a real aiohttp server: what it shows is what the gateway does (the
same loader, request walk, detectors, protect stage and restore), it reads and writes only the
config's policy files, and it refuses odd input with the gateway's error envelope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.policy import signing
from gateway.settings import load_settings
from gateway.studio.access import Access
from gateway.studio.context import Studio
from gateway.studio.playground import MAX_POLICY_CHARS, MAX_PROMPT_CHARS, utf16_offset
from gateway.studio.server import build_studio_app
from tests.browser.playground_fixtures import POLICY, playground_config, signed_config

__all__ = ["playground_config", "signed_config"]  # fixtures, used by name

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


async def studio_client(aiohttp_client: MakeClient, config: Path) -> Client:
    studio = Studio(config, load_settings(config))
    return await aiohttp_client(build_studio_app(studio, Access(None)))


@pytest.fixture
async def client(aiohttp_client: MakeClient, playground_config: Path) -> Client:
    return await studio_client(aiohttp_client, playground_config)


async def post(client: Client, path: str, body: Any, status: int = 200) -> Any:
    response = await client.post(f"/api/playground/{path}", json=body)
    payload = await response.json()
    assert response.status == status, payload
    return payload


async def test_the_listing_names_the_configured_policy_and_the_base_it_extends(
        client: Client) -> None:
    response = await client.get("/api/playground/policies")
    listing = await response.json()
    assert [p["path"] for p in listing["policies"]] == ["policy.yaml"]
    policy = listing["policies"][0]
    assert policy["name"] == "playground-test"
    assert policy["files"] == ["policy.yaml", "base.yaml"]
    assert policy["digest"].startswith("sha256:")
    texts = {f["path"]: f["text"] for f in listing["files"]}
    assert set(texts) == {"policy.yaml", "base.yaml"}  # not elsewhere.yaml, not the config
    assert texts["policy.yaml"] == POLICY
    assert listing["signing_required"] is False


async def test_a_prompt_is_masked_and_the_sample_reply_restored(client: Client) -> None:
    prompt = "Mail ann.lee@example.com or call +44 20 7946 0958 today"
    result = await post(client, "analyze", {"policy": "policy.yaml", "prompt": prompt})
    (text,) = result["texts"]
    found = {(prompt[f["start"]:f["end"]], f["entity"], f["detector"], f["action"])
             for f in text["findings"]}
    assert found == {("ann.lee@example.com", "EMAIL", "patterns", "pseudonymize"),
                     ("+44 20 7946 0958", "PHONE", "patterns", "pseudonymize")}
    assert text["masked"] == "Mail <EMAIL_1> or call <PHONE_1> today"
    assert result["sent"] == text["masked"]
    decision = result["decision"]
    assert (decision["outcome"], decision["rule"]) == ("forward", "default")
    assert decision["data_classes"] == ["personal"]
    assert result["reply"]["model"] == "You wrote:\n" + text["masked"]
    assert result["reply"]["restored"] == "You wrote:\n" + prompt
    assert result["policy"] == {"path": "policy.yaml", "name": "playground-test",
                                "digest": result["policy"]["digest"], "draft": False}


async def test_a_blocked_prompt_sends_nothing_and_names_the_rule(client: Client) -> None:
    result = await post(client, "analyze", {"policy": "policy.yaml",
                                            "prompt": "card 4111 1111 1111 1111 please"})
    decision = result["decision"]
    assert (decision["outcome"], decision["rule"]) == ("block", "actions.CREDIT_CARD=block")
    assert "CREDIT_CARD" in decision["refusal"]
    assert result["sent"] is None
    assert result["reply"] is None
    assert result["texts"][0]["masked"] is None


def test_offsets_are_counted_in_utf16_code_units_as_javascript_does() -> None:
    text = "😀🎉 é x"
    assert [utf16_offset(text, i) for i in range(len(text) + 1)] == [0, 2, 4, 5, 6, 7, 8]
    assert len(text.encode("utf-16-le")) // 2 == utf16_offset(text, len(text))


async def test_findings_after_emoji_carry_javascript_offsets(client: Client) -> None:
    prompt = "🙂🙂 reach \U0001d49c at bo@example.org"
    result = await post(client, "analyze", {"policy": "policy.yaml", "prompt": prompt})
    (finding,) = result["texts"][0]["findings"]
    assert prompt[finding["start"]:finding["end"]] == "bo@example.org"
    as_js = prompt.encode("utf-16-le")
    found = as_js[2 * finding["utf16_start"]:2 * finding["utf16_end"]].decode("utf-16-le")
    assert found == "bo@example.org"
    assert finding["utf16_start"] == finding["start"] + 3


async def test_a_chat_is_read_as_the_gateway_reads_it_every_field_scanned(
        client: Client) -> None:
    chat = {"model": "demo-model", "user": "ops@example.com", "messages": [
        {"role": "system", "content": "Escalate to desk@example.com"},
        {"role": "user", "content": [{"type": "text", "text": "I am ann@example.com"}]},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": '{"email": "bo@example.org"}'}}]}]}
    result = await post(client, "analyze", {"policy": "policy.yaml", "chat": chat})
    entities = [f["entity"] for t in result["texts"] for f in t["findings"]]
    assert entities.count("EMAIL") == 4
    sent = result["sent"]
    assert sent["user"].startswith("<EMAIL_")
    assert sent["messages"][0]["content"].startswith("Escalate to <EMAIL_")
    assert sent["messages"][1]["content"][0]["text"].startswith("I am <EMAIL_")
    assert "bo@example.org" not in str(sent)
    assert "bo@example.org" in result["reply"]["restored"]


async def test_an_anthropic_chat_is_read_by_the_messages_structure(client: Client) -> None:
    chat = {"model": "demo-model", "max_tokens": 64, "system": "Reply to desk@example.com",
            "messages": [{"role": "user", "content": "call +44 20 7946 0958"}]}
    result = await post(client, "analyze", {"policy": "policy.yaml", "chat": chat,
                                            "api": "messages"})
    assert result["sent"]["system"] == "Reply to <EMAIL_1>"
    assert result["sent"]["messages"][0]["content"] == "call <PHONE_1>"


async def test_a_chat_the_gateway_would_refuse_is_refused_with_its_reason(
        client: Client) -> None:
    refused = await post(client, "analyze", {"policy": "policy.yaml",
                                             "chat": {"model": "m", "messages": []}}, 400)
    assert refused["error"]["type"] == "invalid_request_error"
    assert "messages" in refused["error"]["message"]
    assert refused["error"]["request_id"].startswith("studio-")
    image = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}
    refused = await post(client, "analyze", {"policy": "policy.yaml", "chat": image}, 400)
    assert refused["error"]["code"] == "attachment_refused"  # as the policy says


async def test_a_draft_is_analyzed_in_place_of_the_saved_file(client: Client,
                                                             playground_config: Path) -> None:
    draft = POLICY.replace("EMAIL: pseudonymize", "EMAIL: block")
    result = await post(client, "analyze", {"policy": "policy.yaml", "draft": draft,
                                            "prompt": "mail ann@example.com"})
    assert result["decision"]["rule"] == "actions.EMAIL=block"
    assert result["policy"]["draft"] is True
    assert (playground_config.parent / "policy.yaml").read_text() == POLICY
    broken = await post(client, "analyze", {"policy": "policy.yaml", "prompt": "x",
                                            "draft": POLICY + "bogus: 1\n"}, 400)
    assert broken["error"]["code"] == "invalid_policy"
    assert broken["error"]["issues"][0]["line"] == 9


async def test_validation_points_at_file_line_and_column(client: Client) -> None:
    unknown = POLICY.replace("EMAIL: pseudonymize", "EMAIL_ADRESS: pseudonymize")
    result = await post(client, "validate", {"policy": "policy.yaml", "text": unknown})
    assert result["ok"] is False
    (issue,) = result["issues"]
    assert (issue["file"], issue["line"], issue["column"]) == ("policy.yaml", 6, 3)
    assert "unknown entity type" in issue["message"]
    syntax = await post(client, "validate", {"policy": "policy.yaml",
                                             "text": POLICY.replace("actions:", "actions: [")})
    assert syntax["issues"][0]["message"].startswith("invalid YAML")
    assert syntax["issues"][0]["line"] is not None
    fine = await post(client, "validate", {"policy": "policy.yaml", "text": POLICY})
    assert fine == {"ok": True, "issues": []}


async def test_a_base_edit_is_checked_in_every_policy_that_extends_it(client: Client) -> None:
    result = await post(client, "validate", {"policy": "base.yaml",
                                             "text": "version: 1\nname: base\n"
                                                     "default_action: maybe\n"})
    assert result["issues"][0]["file"] == "base.yaml"
    assert result["issues"][0]["line"] == 3


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "config.yaml",
                                  "elsewhere.yaml", "./policy.yaml", "policy.yaml/../base.yaml",
                                  "", "base.yaml\x00"])
async def test_only_the_configs_policy_files_can_be_named(client: Client,
                                                          playground_config: Path,
                                                          name: str) -> None:
    for path, body in (("analyze", {"prompt": "x"}), ("validate", {"text": POLICY}),
                       ("save", {"text": POLICY})):
        refused = await post(client, path, {"policy": name, **body}, 404)
        assert refused["error"]["code"] == "policy_not_found"
    absolute = str(playground_config.parent / "elsewhere.yaml")
    await post(client, "save", {"policy": absolute, "text": POLICY}, 404)
    assert "playground-test" not in (playground_config.parent / "elsewhere.yaml").read_text()


async def test_over_the_caps_is_413(client: Client) -> None:
    huge = await post(client, "analyze", {"policy": "policy.yaml",
                                          "prompt": "a" * (MAX_PROMPT_CHARS + 1)}, 413)
    assert huge["error"]["code"] == "request_too_large"
    await post(client, "validate", {"policy": "policy.yaml",
                                    "text": "#" * (MAX_POLICY_CHARS + 1)}, 413)
    chat = {"model": "m", "messages": [{"role": "user", "content": "a" * 60_000},
                                       {"role": "user", "content": "b" * 60_000}]}
    await post(client, "analyze", {"policy": "policy.yaml", "chat": chat}, 413)
    response = await client.post("/api/playground/analyze", data=b"{" + b" " * 2_000_000 + b"}",
                                 headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("body", [
    {"policy": 1, "prompt": "x"},
    {"policy": ["policy.yaml"], "prompt": "x"},
    {"policy": "policy.yaml", "prompt": 5},
    {"policy": "policy.yaml", "prompt": None},
    {"policy": "policy.yaml"},
    {"policy": "policy.yaml", "prompt": "x", "chat": {}},
    {"policy": "policy.yaml", "chat": "not an object"},
    {"policy": "policy.yaml", "chat": {"model": "m", "messages": [{"role": "user",
                                                                 "content": "x"}]},
     "api": "bogus"},
    {"policy": "policy.yaml", "prompt": "x", "scores": {"a/b/c": "high"}},
    {"policy": "policy.yaml", "prompt": "x", "scores": [1]},
    {"policy": "policy.yaml", "prompt": "x", "draft": 7},
])
async def test_wrong_types_are_400(client: Client, body: dict[str, Any]) -> None:
    refused = await post(client, "analyze", body, 400)
    assert set(refused["error"]) >= {"message", "type", "code", "request_id"}


async def test_a_body_that_is_not_a_json_object_is_400(client: Client) -> None:
    for raw in (b"[1, 2]", b"{nope", b""):
        response = await client.post("/api/playground/validate", data=raw,
                                     headers={"Content-Type": "application/json"})
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    await post(client, "validate", {"policy": "policy.yaml", "text": ["x"]}, 400)


async def test_saving_replaces_the_file_only_when_it_is_valid(client: Client,
                                                              playground_config: Path) -> None:
    file = playground_config.parent / "policy.yaml"
    file.chmod(0o640)
    refused = await post(client, "save", {"policy": "policy.yaml",
                                          "text": POLICY + "bogus: 1\n"}, 400)
    assert refused["error"]["issues"][0]["line"] == 9
    assert file.read_text() == POLICY
    edited = POLICY.replace("EMAIL: pseudonymize", "EMAIL: redact")
    saved = await post(client, "save", {"policy": "policy.yaml", "text": edited})
    assert file.read_text() == edited
    assert saved["signed"] is False
    assert file.stat().st_mode & 0o777 == 0o640
    assert not list(file.parent.glob(".policy.yaml.*"))  # no temp file left behind
    result = await post(client, "analyze", {"policy": "policy.yaml", "prompt": "a@b.co"})
    assert result["policy"]["digest"] == saved["digest"]
    assert result["texts"][0]["masked"] != "a@b.co"


async def test_signed_policies_are_saved_signed_with_the_right_key_only(
        aiohttp_client: MakeClient, signed_config: Path) -> None:
    client = await studio_client(aiohttp_client, signed_config)
    folder = signed_config.parent
    file, sig = folder / "policy.yaml", folder / "policy.yaml.sig"
    listing = await (await client.get("/api/playground/policies")).json()
    assert listing["signing_required"] is True
    edited = POLICY.replace("EMAIL: pseudonymize", "EMAIL: redact")
    before = sig.read_text()

    missing = await post(client, "save", {"policy": "policy.yaml", "text": edited}, 400)
    assert missing["error"]["code"] == "signing_key_required"
    wrong_key = str(folder / "other.key")
    wrong = await post(client, "save", {"policy": "policy.yaml", "text": edited,
                                        "signing_key": wrong_key}, 400)
    assert wrong["error"]["code"] == "signing_key_mismatch"
    assert wrong_key not in str(wrong)
    not_a_key = await post(client, "save", {"policy": "policy.yaml", "text": edited,
                                            "signing_key": str(folder / "signing.pub")}, 400)
    assert not_a_key["error"]["code"] == "signing_key_unusable"
    assert (file.read_text(), sig.read_text()) == (POLICY, before)  # nothing written

    saved = await post(client, "save", {"policy": "policy.yaml", "text": edited,
                                        "signing_key": str(folder / "signing.key")})
    assert saved["signed"] is True
    assert file.read_text() == edited
    signing.verify_file(file, signing.load_public_key(folder / "signing.pub"))


async def test_the_listing_says_when_the_gateway_would_refuse_a_signature(
        aiohttp_client: MakeClient, signed_config: Path) -> None:
    client = await studio_client(aiohttp_client, signed_config)
    listing = await (await client.get("/api/playground/policies")).json()
    assert listing["policies"][0]["issues"] == []
    base = signed_config.parent / "base.yaml"
    base.write_text(base.read_text() + "# edited, not signed again\n")
    listing = await (await client.get("/api/playground/policies")).json()
    (issue,) = listing["policies"][0]["issues"]
    assert issue["key"] == "signature"
    assert "base.yaml: signature does not verify" in issue["message"]
