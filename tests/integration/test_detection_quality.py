"""What the detectors see, through the real gateway with the official SDKs: evasions of the
pattern tier (invisible characters, full-width forms, encodings), values split across content
parts and messages, names recurring in other cases, and the identifier and address types. For
each: the model (the demo server, which echoes the prompt) never receives the value, and the
client gets it back, streamed and not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

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

EVASIONS = {
    "zero-width space in an email": "john\u200b.doe@example.com",
    "soft hyphen in an email": "john.d\u00adoe@example.com",
    "full-width email": "\uff4a\uff4f\uff48\uff4e\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c"
                        "\uff45\uff0e\uff43\uff4f\uff4d",
    "percent-encoded email": "john.doe%40example.com",
    "character-reference email": "john.doe&#64;example.com",
    "email after Chinese": "请联系john.doe@example.com谢谢",
    "zero-width spaces in a card": "4111\u200b1111\u200b1111\u200b1111",
    "full-width card digits": "\uff14\uff11\uff11\uff11 1111 1111 1111",
    "card with dots": "4111.1111.1111.1111",
    "card with NBSP": "4111\u00a01111\u00a01111\u00a01111",
    "card with slashes": "4111/1111/1111/1111",
    "card with double spaces": "4111  1111  1111  1111",
    "zero-width space in a key": "sk-proj-a1B2c3D4e5F6g7H8\u200bi9J0k1L2m3N4o5P6q7R8",
    "IBAN inside Polish text": "numer konta PL61 1090 1014 0000 0712 1981 2874, dziękuję",
    "SSN without dashes": "my SSN is 123456789",
}
# The part of each case the model must not see (for the email after Chinese: the address).
SECRET_PART = {"email after Chinese": "john.doe@example.com",
               "IBAN inside Polish text": "1090 1014 0000 0712",
               "SSN without dashes": "123456789"}
TYPES = {
    "UK NINO": "NI number AB 12 34 56 C",
    "NHS number": "NHS number 943 476 5919",
    "Steuer-ID": "Steuer-ID 86095742719",
    "French NIR": "NIR 1 85 05 78 006 084 91",
    "Dutch BSN": "BSN 111222333",
    "Spanish DNI": "DNI 12345678Z",
    "codice fiscale": "CF RSSMRA85T10A562S",
    "Aadhaar": "Aadhaar 2345 6789 0124",
    "PAN": "PAN ABCPE1234F",
    "CPF": "CPF 123.456.789-09",
    "passport": "passport no. 533401372",
    "date of birth": "DOB: 12/03/1985",
    "bank account": "account number 12345678",
    "medical record": "MRN: 00123456",
    "US address": "1600 Pennsylvania Ave NW, Washington, DC 20500",
    "UK address": "221B Baker Street, London NW1 6XE",
    "German address": "Hauptstraße 5, 10115 Berlin",
    "Dutch address": "Keizersgracht 123, 1015 CJ Amsterdam",
    "Chinese name": "我叫王伟",
    "Korean name": "저는 김민준입니다",
    "Cyrillic name": "Клиент Иван Петров",
    "Arabic name": "السيد محمد العلي",
}
TYPE_SECRET = {"UK NINO": "AB 12 34 56 C", "NHS number": "943 476 5919",
               "Steuer-ID": "86095742719", "French NIR": "006 084 91", "Dutch BSN": "111222333",
               "Spanish DNI": "12345678Z", "codice fiscale": "RSSMRA85T10A562S",
               "Aadhaar": "2345 6789 0124", "PAN": "ABCPE1234F", "CPF": "123.456.789-09",
               "passport": "533401372", "date of birth": "12/03/1985",
               "bank account": "12345678", "medical record": "00123456",
               "US address": "Pennsylvania", "UK address": "Baker", "German address": "Haupt",
               "Dutch address": "Keizersgracht", "Chinese name": "王伟",
               "Korean name": "김민준", "Cyrillic name": "Петров", "Arabic name": "محمد"}


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[ServerThread, ServerThread]]:
    with ServerThread(build_demo_app(required_key=UPSTREAM_SECRET)) as demo:
        settings = settings_for(
            [demo_backend("o", demo.url), demo_backend("a", demo.url, "anthropic")],
            policy={"version": 1, "name": "quality",
                    "detectors": {"builtin": ["patterns", "presidio", "gazetteer"]}})
        with gateway_for(settings) as gw:
            yield gw, demo


def sent_upstream(demo: ServerThread) -> Any:
    return httpx.get(demo.url + "/_demo/last").json()


def upstream_text(demo: ServerThread) -> str:
    """Everything the model received, JSON escapes undone, so a value cannot hide in them."""
    return json.dumps(sent_upstream(demo), ensure_ascii=False)


def chat(gw: ServerThread, messages: list[dict[str, Any]], stream: bool) -> str:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
    if stream:
        chunks = client.chat.completions.create(model="test-model", stream=True,
                                                messages=messages)  # type: ignore[arg-type]
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reply = client.chat.completions.create(model="test-model", messages=messages)  # type: ignore[arg-type]
    return reply.choices[0].message.content or ""


def assert_hidden_and_restored(demo: ServerThread, reply: str, written: str, secret: str
                               ) -> None:
    seen = upstream_text(demo)
    assert secret not in seen, seen
    assert written not in seen
    assert written in reply  # the client's own characters come back, evasions included


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("case", EVASIONS, ids=list(EVASIONS))
def test_evasion_is_masked_and_restored(stack: tuple[ServerThread, ServerThread], case: str,
                                        stream: bool) -> None:
    gw, demo = stack
    written = EVASIONS[case]
    reply = chat(gw, [{"role": "user", "content": f"Please note: {written}."}], stream)
    assert_hidden_and_restored(demo, reply, written, SECRET_PART.get(case, written))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("case", TYPES, ids=list(TYPES))
def test_identifier_or_address_is_masked_and_restored(
        stack: tuple[ServerThread, ServerThread], case: str, stream: bool) -> None:
    gw, demo = stack
    reply = chat(gw, [{"role": "user", "content": f"Record: {TYPES[case]}. Summarise."}],
                 stream)
    assert_hidden_and_restored(demo, reply, TYPES[case], TYPE_SECRET[case])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_email_split_across_content_parts(stack: tuple[ServerThread, ServerThread],
                                          stream: bool) -> None:
    gw, demo = stack
    parts = [{"type": "text", "text": "write to john.doe"},
             {"type": "text", "text": "@example.com please"}]
    reply = chat(gw, [{"role": "user", "content": parts}], stream)
    seen = upstream_text(demo)
    assert "john.doe" not in seen
    assert "example.com" not in seen
    assert "john.doe" in reply
    assert "@example.com" in reply


def test_card_split_across_messages(stack: tuple[ServerThread, ServerThread]) -> None:
    gw, demo = stack
    reply = chat(gw, [{"role": "user", "content": "my card is 4111 1111"},
                      {"role": "user", "content": " 1111 1111, charge it"}], False)
    seen = upstream_text(demo)
    assert "4111 1111" not in seen
    assert "1111 1111" not in seen
    assert "1111 1111, charge it" in reply


def test_a_name_found_once_is_masked_in_every_case(stack: tuple[ServerThread, ServerThread]
                                                   ) -> None:
    gw, demo = stack
    messages = [{"role": "user", "content": "My name is Margaret Thornbury."},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": "THORNBURY is on the list, and so is "
                 "margaret thornbury's manager.\nThornbury\nsigned off"}]
    reply = chat(gw, messages, False)
    seen = upstream_text(demo).casefold()
    assert "thornbury" not in seen
    assert "margaret" not in seen
    assert "THORNBURY is on the list" in reply
    assert "margaret thornbury's" in reply


def test_anthropic_stream_restores_an_evasion(stack: tuple[ServerThread, ServerThread]) -> None:
    gw, demo = stack
    written = EVASIONS["zero-width space in an email"]
    claude = anthropic.Anthropic(base_url=gw.url, api_key=TEST_KEY, max_retries=0)
    with claude.messages.stream(model="test-model", max_tokens=64, messages=[
            {"role": "user", "content": f"mail {written} now"}]) as s:
        reply = "".join(s.text_stream)
    assert_hidden_and_restored(demo, reply, written, written)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_names_and_places_from_the_gazetteer(stack: tuple[ServerThread, ServerThread],
                                             stream: bool) -> None:
    gw, demo = stack
    prompt = ("Thaddeus had given his keys to the team; invite adam, kristina and caleb. "
              "We met in Poznań and then flew to KĘDZIERZYN-KOŹLE.")
    reply = chat(gw, [{"role": "user", "content": prompt}], stream)
    seen = upstream_text(demo)
    for value in ("Thaddeus", "kristina", "caleb", "Poznań", "KĘDZIERZYN"):
        assert value not in seen
    assert prompt in reply
