"""The prompt's embedding windows: every token in one, neighbours overlapping, the last one
ending at the text's end, and a bound refused before any window is embedded."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ScorerError, TooManyChunks
from gateway.fhe.chunks import Windows
from gateway.fhe.semantic import over_chunks
from gateway.policy.schema import SemanticRule


@given(tokens=st.integers(0, 5000), size=st.integers(8, 254), overlap_share=st.floats(0, 0.49))
def test_windows_cover_every_token_and_overlap(tokens: int, size: int,
                                               overlap_share: float) -> None:
    windows = Windows(size, int(size * overlap_share), limit=10_000)
    spans = windows.spans(tokens)
    assert len(spans) == windows.count(tokens)
    assert spans[0][0] == 0
    assert spans[-1][1] == tokens
    assert all(end - start == min(size, tokens) for start, end in spans)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end - start >= windows.overlap  # a border is inside both
    covered = set().union(*(range(start, end) for start, end in spans))
    assert covered == set(range(tokens))


def test_past_the_bound_is_refused() -> None:
    windows = Windows(100, 20, limit=3)
    assert len(windows.spans(100 + 80 * 2)) == 3
    with pytest.raises(TooManyChunks, match=r"4 embedding windows, over fhe\.max_chunks"):
        windows.spans(100 + 80 * 2 + 1)


def rule(aggregate: str) -> SemanticRule:
    return SemanticRule.model_validate({"name": "r", "scorer": "s", "model": "m",
                                        "label": "a", "threshold": 0.5, "block": True,
                                        "aggregate": aggregate})


def test_rules_aggregate_over_windows() -> None:
    chunks = [{"a": 0.1, "b": 0.9}, {"a": 0.7, "b": 0.0}, {"a": 0.4, "b": 0.0}]
    assert over_chunks(chunks, rule("max")) == pytest.approx(0.7)
    assert over_chunks(chunks, rule("mean")) == pytest.approx(0.4)
    assert rule("max").key == "s/m/a"
    assert rule("mean").key == "s/m/a@mean"


def test_a_label_the_model_lacks_is_a_scorer_failure() -> None:
    with pytest.raises(ScorerError, match="no label 'a'"):
        over_chunks([{"b": 0.3}], rule("max"))


@pytest.fixture(scope="module")
def embedder():  # type: ignore[no-untyped-def]
    from gateway.fhe.embed import Embedder  # noqa: PLC0415

    return Embedder()


def test_text_windows_are_the_windows_embedded(embedder) -> None:  # type: ignore[no-untyped-def]
    """The remote path (text windows) and the local one (token windows) see the same text."""
    from gateway.fhe.embed import TextWindows  # noqa: PLC0415

    windows = Windows(30, 8, limit=64)
    text = " ".join(f"Sentence number {i} talks about bread, flour and water." for i in range(20))
    rows = embedder.embed_windows(text, windows)
    cut = TextWindows(windows).cut(text)
    assert len(cut) == rows.shape[0] > 1
    assert cut[-1].endswith("water.")
    for piece, row in zip(cut, rows, strict=True):
        assert float(embedder.embed(piece) @ row) > 0.999
    assert float(embedder.embed_windows("short", windows)[0] @ embedder.embed("short")) \
        == pytest.approx(1.0)
