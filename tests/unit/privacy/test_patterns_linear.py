"""Every pattern is linear in its input: doubling a hostile input at most doubles the work.

Measured as the best of several timings at n and 2n characters (a quadratic pattern gives a
ratio near 4, a linear one near 2); a ratio under 3 in any of three tries passes, so a noisy
machine cannot fail a linear pattern, and a quadratic one cannot pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from gateway.privacy.masker import Masker, MaskingRules
from gateway.privacy.patterns import PatternDetector
from gateway.privacy.spans import Span
from tests.unit.privacy.findings import read_and_detect

N = 60_000
detector = PatternDetector()


def repeat(unit: str) -> Callable[[int], str]:
    return lambda n: (unit * (n // len(unit) + 1))[:n]


HOSTILE: dict[str, Callable[[int], str]] = {
    "pem headers without an end": repeat("-----BEGIN RSA PRIVATE KEY-----\n"),
    "pem ends that are not private keys": lambda n: "-----BEGIN PRIVATE KEY-----" + repeat(
        "-----END CERTIFICATE-----")(n),
    "password= chains": repeat("password="),
    "api_key: chains": repeat("api_key: "),
    "keywords before long blanks": repeat("secret" + " " * 40),
    "aws secret keys": repeat("aws_secret_access_key="),
    "openai key prefixes": repeat("sk-"),
    "anthropic key prefixes": repeat("sk-ant-api01-"),
    "stripe key prefixes": repeat("sk_live_"),
    "github tokens": repeat("ghp_"),
    "github fine-grained": repeat("github_pat_"),
    "gitlab": repeat("glpat-"),
    "slack": repeat("xoxb-"),
    "slack hooks": repeat("https://hooks.slack.com/services/"),
    "google": repeat("AIza"),
    "hugging face": repeat("hf_"),
    "npm": repeat("npm_"),
    "azure": repeat("AccountKey="),
    "jwt fragments": repeat("eyJ"),
    "jwt first parts": repeat("eyJabcdefghijk."),
    "connection urls": repeat("a://b:"),
    "emails without domains": repeat("a@"),
    "domains without an end": lambda n: "x@" + repeat("a.")(n),
    "long local parts": repeat("a" * 200 + "@"),
    "iban groups": repeat("GB00 ABCD "),
    "ipv6 colons": repeat("a:"),
    "ipv6 double colons": repeat("::"),
    "spaced digits": repeat("1 "),
    "dashed digits": repeat("1-"),
    "dotted digits": repeat("1.1."),
    "name cues": repeat("Dear "),
    "by and names": repeat("by Ann Lee "),
    # identifiers, addresses and the reading form (issue 15)
    "nino-like runs": repeat("AB 12 "),
    "fiscal-code letters": repeat("RSSMRA85T"),
    "dni digits": repeat("12345678 "),
    "context words without values": repeat("dob: "),
    "context words before long codes": repeat("passport " + "A1" * 30 + " "),
    "account words and digits": repeat("account number 1 "),
    "street numbers without a type": repeat("12 Baker "),
    "street words without numbers": repeat("Via Roma "),
    "type-first names": repeat("Calle Mayor Calle "),
    "suffix words": repeat("Hauptstraßestraße "),
    "japanese blocks": repeat("1-2-"),
    "house numbers first": repeat("No. 1 "),
    "korean roads": repeat("21 Teheran-ro "),
    "chinese roads": repeat("成都市路"),
    "address tails": lambda n: "12 Baker Street" + repeat(", Apt 5 Flat")(n),
    "password words with spaces": repeat("passwort "),
    "postcodes near address words": repeat("address 12345 Berlin "),
    "capitalised words before a state": repeat("Springfield Springfield, "),
    "han surnames before a title": repeat("王王王先"),
    "han after a cue": repeat("我叫王"),
    "hangul surnames": repeat("김민 "),
    "cyrillic capitalised words": repeat("Иван Петр "),
    "cyrillic surname endings": repeat("Петров "),
    "arabic cues": repeat("السيد "),
    "names before parentheses": repeat("Kim Min (김"),
    "han before parentheses": repeat("赵磊 (Zhao "),
    "chat speakers": repeat("[09:31] priya: "),
    "speakers with times": repeat("Anja Wolf 10:08: "),
    "zero-width spaces": repeat("a\u200b@"),
    "full-width text": repeat("\uff41\uff20"),
    "percent escapes": repeat("%40%"),
    "character references": repeat("&#64;&#"),
    "distinct names after cues": lambda n: "".join(
        f"Dear {chr(65 + i % 26)}{i:06d}x Smith. " for i in range(n // 22))[:n],
}


def best_seconds(fn: Callable[[str], object], text: str, tries: int = 3) -> float:
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - started)
    return best


def ratio(fn: Callable[[str], object], make: Callable[[int], str]) -> float:
    return best_seconds(fn, make(2 * N)) / best_seconds(fn, make(N))


def assert_linear(fn: Callable[[str], object], make: Callable[[int], str]) -> None:
    ratios = []
    for _ in range(3):
        ratios.append(ratio(fn, make))
        if ratios[-1] < 3:
            return
    pytest.fail(f"doubling the input multiplied the time by {min(ratios):.1f}")


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_each_pattern_is_linear_on_hostile_input(make: Callable[[int], str]) -> None:
    assert_linear(read_and_detect, make)


def test_name_parts_are_linear_in_the_number_of_names() -> None:
    """A chat of many messages, each with a distinct name: every name is looked for in every
    message, by word lookup rather than one alternation per message."""
    masker = Masker(MaskingRules())

    def run(length: int) -> object:
        texts = [f"Message from Person{i:06d} Surname{i:06d} about the order"
                 for i in range(length // 200)]
        spans = [[Span(13, 40, "PERSON", 0.9, "ner")] for _ in texts]
        return masker.conversation_findings(texts, spans)

    assert_linear(lambda text: run(len(text)), lambda n: "x" * n)


def test_overlapping_findings_are_linear() -> None:
    masker = Masker(MaskingRules())

    def run(n: int) -> object:
        text = "x" * n
        spans = [Span(i, i + 5, "PERSON", 0.9, "ner") for i in range(0, n - 5, 2)]
        return masker.findings(text, spans)

    assert_linear(lambda text: run(len(text)), lambda n: "x" * n)
