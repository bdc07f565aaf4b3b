from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.privacy.restorer import StreamRestorer, json_escape
from gateway.privacy.vault import Vault


def vault() -> Vault:
    v = Vault()
    assert v.placeholder("PERSON", "Jane Doe") == "<PERSON_1>"
    assert v.placeholder("EMAIL", "jane@example.com") == "<EMAIL_1>"
    assert v.placeholder("PERSON", "Bob") == "<PERSON_2>"
    assert v.placeholder("PERSON", "Jane Doe") == "<PERSON_1>"  # same value, same placeholder
    assert v.placeholder("CREDIT_CARD", 'quote " and \\ back') == "<CREDIT_CARD_1>"
    return v


REPLY = ("Hello <PERSON_1>, I wrote to <EMAIL_1> and <PERSON_2>. Card <CREDIT_CARD_1>. "
         "Not ours: <PERSON_9>, <person_1>, <EMAIL_1, a < b > c, <<PERSON_2>>, <PERSON_1")


def test_restore_is_exact_and_case_sensitive() -> None:
    assert vault().restore(REPLY) == (
        "Hello Jane Doe, I wrote to jane@example.com and Bob. Card quote \" and \\ back. "
        "Not ours: <PERSON_9>, <person_1>, <EMAIL_1, a < b > c, <Bob>, <PERSON_1")


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_any_split_restores_like_the_whole(cuts: list[int]) -> None:
    v = vault()
    restorer = StreamRestorer(v)
    out = "".join(restorer.feed(piece) for piece in split(REPLY, cuts)) + restorer.flush()
    assert out == v.restore(REPLY)


@given(st.text(alphabet="<>PERSON_12 EMAILxy", max_size=80),
       st.lists(st.integers(min_value=0, max_value=200), max_size=20))
def test_any_text_any_split(text: str, cuts: list[int]) -> None:
    v = vault()
    restorer = StreamRestorer(v)
    out = "".join(restorer.feed(piece) for piece in split(text, cuts)) + restorer.flush()
    assert out == v.restore(text)


def test_holds_back_only_a_possible_placeholder() -> None:
    restorer = StreamRestorer(vault())
    assert restorer.feed("Hi <PER") == "Hi "
    assert restorer.holding
    assert restorer.feed("SON_1> there <b") == "Jane Doe there <b"  # '<b' cannot grow into one
    assert not restorer.holding
    assert restorer.feed("x" * 10) == "x" * 10


def test_json_escaped_restore_for_tool_arguments() -> None:
    v = vault()
    restorer = StreamRestorer(v, json_escape)
    args = '{"name": "<CREDIT_CARD_1>"}'
    out = "".join(restorer.feed(c) for c in args) + restorer.flush()
    assert out == '{"name": "quote \\" and \\\\ back"}'
