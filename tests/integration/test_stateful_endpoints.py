"""Endpoints clients call besides creating messages, through the official SDKs: Anthropic's
count_tokens (masked like a message), a model by id, and stored Responses: read back and
listed restored, continued with `previous_response_id` without placeholders changing meaning,
deleted; and none of it reachable by another tenant."""

from __future__ import annotations

import anthropic
import httpx2 as httpx
import openai
import pytest

from tests.conftest import Demo
from tests.servers import OTHER_KEY, TEST_KEY, ServerThread

EMAIL = "ada.lovelace@example.org"
OTHER_EMAIL = "grace.hopper@example.net"


def oai(gateway: ServerThread, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def claude(gateway: ServerThread, key: str = TEST_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def test_count_tokens_is_masked_like_a_message(gateway: ServerThread, demo: Demo) -> None:
    count = claude(gateway).messages.count_tokens(
        model="test-model", system=f"Reply to {EMAIL}",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": f"Write to {OTHER_EMAIL}"},
            {"type": "document", "title": f"Notes for {EMAIL}",
             "source": {"type": "text", "media_type": "text/plain",
                        "data": f"cc {OTHER_EMAIL}"}}]}])
    assert count.input_tokens > 0
    sent = demo.state.received[-1].decode()
    assert EMAIL not in sent
    assert OTHER_EMAIL not in sent
    assert demo.state.last_body["system"] == "Reply to <EMAIL_1>"


def test_models_retrieve_through_both_sdks(gateway: ServerThread) -> None:
    assert oai(gateway).models.retrieve("test-model").id == "test-model"
    assert claude(gateway).models.retrieve("test-model").id == "test-model"
    with pytest.raises(openai.NotFoundError):
        oai(gateway).models.retrieve("no-such-model")
    with pytest.raises(anthropic.NotFoundError):
        claude(gateway).models.retrieve("no-such-model")
    with pytest.raises(openai.NotFoundError):  # exists, but not for this tenant
        oai(gateway, OTHER_KEY).models.retrieve("test-model")


def test_stored_response_read_back_restored(gateway: ServerThread, demo: Demo) -> None:
    client = oai(gateway)
    created = client.responses.create(model="test-model", input=f"Mail {EMAIL} today")
    assert EMAIL not in demo.state.received[-1].decode()
    again = client.responses.retrieve(created.id)
    assert again.output_text == created.output_text
    assert EMAIL in again.output_text
    items = client.responses.input_items.list(created.id)
    assert items.data[0].content[0].text == f"Mail {EMAIL} today"
    streamed = client.responses.retrieve(created.id, stream=True)
    text = "".join(e.delta for e in streamed if e.type == "response.output_text.delta")
    assert text == created.output_text


def test_previous_response_keeps_placeholders_meaning(gateway: ServerThread,
                                                      demo: Demo) -> None:
    client = oai(gateway)
    first = client.responses.create(model="test-model", input=f"Remember {EMAIL}")
    second = client.responses.create(model="test-model", previous_response_id=first.id,
                                     input=f"Now also {OTHER_EMAIL}")
    # upstream: turn 1 was <EMAIL_1>, so turn 2's new address must be <EMAIL_2>
    assert demo.state.last_body["input"] == "Now also <EMAIL_2>"
    assert second.output_text.endswith(f"(continuing from: Remember {EMAIL})")
    assert OTHER_EMAIL in second.output_text


def test_stored_responses_are_the_creating_tenants_only(gateway: ServerThread) -> None:
    created = oai(gateway).responses.create(model="test-model", input=f"Private {EMAIL}")
    other = oai(gateway, OTHER_KEY)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(created.id)
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        other.responses.create(model="other-model", previous_response_id=created.id,
                               input="what did they say?")


def test_delete_forgets_the_response(gateway: ServerThread, demo: Demo) -> None:
    client = oai(gateway)
    created = client.responses.create(model="test-model", input="short-lived")
    client.responses.delete(created.id)
    assert created.id not in demo.state.responses
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_unstored_responses_are_not_kept(gateway: ServerThread) -> None:
    client = oai(gateway)
    created = client.responses.create(model="test-model", input="ephemeral", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_conversations_are_refused(gateway: ServerThread) -> None:
    with pytest.raises(openai.BadRequestError, match="conversation"):
        oai(gateway).responses.create(model="test-model", input="hi",
                                      conversation="conv_123")


@pytest.mark.parametrize(("path", "query"), [
    ("/v1/responses/{id}", "debug=1"),
    ("/v1/responses/{id}", "include=" + EMAIL),
    ("/v1/responses/{id}/input_items", "limit=lots"),
])
def test_query_parameters_are_vetted(gateway: ServerThread, path: str, query: str) -> None:
    created = oai(gateway).responses.create(model="test-model", input="x")
    r = httpx.get(gateway.url + path.format(id=created.id) + "?" + query,
                  headers={"Authorization": f"Bearer {TEST_KEY}"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_query"
    assert EMAIL not in r.text
