"""The slot layout, checked by simulating the scorer's rotations in numpy: one query or several
packed into one ciphertext, each query getting exactly its own W @ x."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.fhe.packing import (
    HALF,
    INPUT_DIM,
    PACKINGS,
    SLOTS,
    layout_for,
    passes_for,
    query,
    read_scores,
    simulate,
)


@pytest.mark.parametrize("rows", [1, 31, 128, 129, 300, 1000, 1280, 1281, 4097, 10_000])
def test_simulated_product_equals_numpy(rows: int) -> None:
    rng = np.random.default_rng(rows)
    weights = rng.standard_normal((rows, INPUT_DIM))
    x = rng.standard_normal(INPUT_DIM)
    assert np.abs(simulate([x], weights, layout_for(rows))[0] - weights @ x).max() < 1e-9


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 3000), queries=st.sampled_from(PACKINGS), data=st.data())
def test_packed_queries_each_get_their_own_scores(rows: int, queries: int,
                                                  data: st.DataObject) -> None:
    """Any K, any number of queries up to the packing, each block's query a different vector:
    row k of the result is W @ x_k, whatever the other blocks hold."""
    count = data.draw(st.integers(1, queries))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    weights = rng.standard_normal((rows, INPUT_DIM))
    xs = [rng.standard_normal(INPUT_DIM) for _ in range(count)]
    scores = simulate(xs, weights, layout_for(rows, queries))
    assert scores.shape == (count, rows)
    assert np.abs(scores - np.stack([weights @ x for x in xs])).max() < 1e-9


def test_a_block_is_read_only_by_its_own_query() -> None:
    """Changing one query changes its own scores and no other's."""
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((1000, INPUT_DIM))
    xs = [rng.standard_normal(INPUT_DIM) for _ in range(8)]
    layout = layout_for(1000, 8)
    before = simulate(xs, weights, layout)
    xs[3] = rng.standard_normal(INPUT_DIM)
    after = simulate(xs, weights, layout)
    assert np.array_equal(np.delete(before, 3, axis=0), np.delete(after, 3, axis=0))
    assert np.abs(after[3] - weights @ xs[3]).max() < 1e-9


@pytest.mark.parametrize("queries", PACKINGS)
@pytest.mark.parametrize("rows", [10, 1000, 10_000])
def test_layout_arithmetic(rows: int, queries: int) -> None:
    layout = layout_for(rows, queries)
    assert layout.baby * layout.giant == HALF
    assert layout.per_set * layout.sets >= rows
    # every read (output slots plus HALF - 1) stays inside the block
    assert layout.repeats * INPUT_DIM + HALF - 1 <= layout.width
    assert layout.width * layout.queries == SLOTS
    assert all(0 < step < SLOTS for step in layout.rotation_steps())


def test_passes_never_pad_a_block() -> None:
    assert [passes_for(n) for n in (1, 3, 5, 8, 19)] == [[1], [2, 1], [4, 1], [8], [8, 8, 2, 1]]
    assert passes_for(5, (1, 2)) == [2, 2, 1]
    assert passes_for(0) == []


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        layout_for(0)
    with pytest.raises(ValueError, match="one of"):
        layout_for(10, 3)
    with pytest.raises(ValueError, match="384-dim"):
        simulate([np.zeros(100)], np.zeros((3, INPUT_DIM)), layout_for(3))
    with pytest.raises(ValueError, match="3 queries for a layout of 2"):
        query([np.zeros(INPUT_DIM)] * 3, layout_for(3, 2))
    with pytest.raises(ValueError, match="sets"):
        read_scores([], layout_for(3), 1)
