from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.policy.schema import Detectors, Policy
from gateway.privacy.masker import Masker, MaskingRules
from gateway.privacy.patterns import PatternDetector
from gateway.privacy.spans import Span
from gateway.protect import masking_rules


def rules(**fields: Any) -> MaskingRules:
    return masking_rules(Policy(version=1, name="t", **fields))


TEXT = "Mail jane@example.com, card 4111 1111 1111 1111, again jane@example.com"


def mask(settings: MaskingRules, texts: list[str], tenant: str = "t",
         secret: bytes | None = b"0123456789abcdef") -> list[str]:
    detector = PatternDetector()
    return Masker(settings, secret).mask(texts, [detector.detect(t) for t in texts], tenant).texts


def test_pseudonymize_numbers_by_first_appearance_across_texts() -> None:
    out = mask(rules(), [TEXT, "bob@example.com then jane@example.com"])
    assert out == ["Mail <EMAIL_1>, card <CREDIT_CARD_1>, again <EMAIL_1>",
                   "<EMAIL_2> then <EMAIL_1>"]


def test_block_is_never_rewritten_and_sent() -> None:
    """The policy decision refuses first; rewriting a blocked finding is a backstop error."""
    with pytest.raises(InvalidRequest) as info:
        mask(rules(actions={"CREDIT_CARD": "block"}), [TEXT])
    assert info.value.code == "sensitive_data_blocked"
    assert "4111" not in info.value.message


def test_redact_and_allow() -> None:
    settings = rules(actions={"EMAIL": "redact", "CREDIT_CARD": "allow"})
    assert mask(settings, [TEXT]) == [
        "Mail [REDACTED:EMAIL], card 4111 1111 1111 1111, again [REDACTED:EMAIL]"]


def test_hash_is_keyed_per_tenant_and_stable() -> None:
    settings = rules(actions={"EMAIL": "hash"})
    a1, a2 = mask(settings, [TEXT, "jane@example.com"], tenant="a")
    b1 = mask(settings, [TEXT], tenant="b")[0]
    token = a2
    assert token.startswith("[EMAIL:")
    assert len(token) == len("[EMAIL:]") + 16
    assert a1.count(token) == 2  # equal values hash equally
    assert token not in b1  # another tenant gets other tokens
    assert "jane" not in a1


def test_threshold_allow_list_deny_list() -> None:
    spans = [Span(0, 3, "ORGANIZATION", 0.6, "ner"), Span(8, 11, "PERSON", 0.4, "ner"),
             Span(16, 19, "PERSON", 0.9, "ner")]
    text = "EKS and Bob and Ann said Project Falcon"
    settings = rules(detectors=Detectors(default_threshold=0.5, allow_list=["eks"],
                                         deny_list={"PROJECT": ["project falcon"]}))
    out = Masker(settings).mask([text], [spans], "t").texts[0]
    assert out == "EKS and Bob and <PERSON_1> said <PROJECT_1>"


def test_overlaps_keep_higher_score_then_longer() -> None:
    spans = [Span(0, 10, "PERSON", 0.7, "a"), Span(5, 15, "LOCATION", 0.9, "b"),
             Span(20, 24, "PERSON", 0.8, "a"), Span(20, 26, "PERSON", 0.8, "b")]
    found = Masker(rules()).findings("x" * 30, spans)
    assert [(s.start, s.end) for s in found] == [(5, 15), (20, 26)]


def test_name_parts_seen_anywhere_are_masked_everywhere() -> None:
    spans = [[Span(8, 26, "PERSON", 0.85, "ner")], []]
    texts = ["Meeting Faina D. Yefremova today", "Ask Yefremova, or Faina, not faina"]
    out = Masker(rules()).mask(texts, spans, "t").texts
    assert out == ["Meeting <PERSON_1> today", "Ask <PERSON_2>, or <PERSON_3>, not <PERSON_4>"]


def test_name_parts_in_any_case_and_possessive_but_not_common_words() -> None:
    texts = ["Contract for Will Grant-Oyelaran's team", "WILL GRANT-OYELARAN and grant-oyelaran"
             " agreed; will grant access. Will's dog"]
    out = Masker(rules()).mask(texts, [[Span(13, 36, "PERSON", 0.85, "ner")], []], "t").texts
    assert "Will" not in out[0]
    assert "Grant" not in out[0]
    assert "OYELARAN" not in out[1]
    assert "oyelaran" not in out[1]
    assert "will grant access" in out[1]  # the lowercase words are not the name
    assert "Will's dog" not in out[1]


def test_cue_names_from_the_pattern_tier() -> None:
    out = mask(rules(), ["Hello, my name is Siiri Tamm. Dear Sir, a song by Ana Lee."])
    assert out == ["Hello, my name is <PERSON_1>. Dear Sir, a song by <PERSON_2>."]
