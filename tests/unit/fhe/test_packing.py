"""The slot layout, checked by simulating the scorer's rotations in numpy: one query or several
packed into one ciphertext, each query getting exactly its own W @ x."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.fhe.packing import (
    BABIES,
    INPUT_DIM,
    PACKINGS,
    SLOTS,
    WIDTHS,
    Layout,
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


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 1500), queries=st.sampled_from(PACKINGS),
       chunk=st.sampled_from(WIDTHS), baby=st.sampled_from(BABIES), data=st.data())
def test_every_chunk_width_gives_each_query_its_own_scores(
        rows: int, queries: int, chunk: int, baby: int, data: st.DataObject) -> None:
    """Not only the widths layout_for picks: every d, baby-step count and packing is exact, so
    a change of the cost model can never pick a wrong layout."""
    layout = Layout(rows, queries, chunk, baby, chunk // 2 // baby)
    count = data.draw(st.integers(1, queries))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    weights = rng.standard_normal((rows, INPUT_DIM))
    xs = [rng.standard_normal(INPUT_DIM) for _ in range(count)]
    scores = simulate(xs, weights, layout)
    assert np.abs(scores - np.stack([weights @ x for x in xs])).max() < 1e-9


@pytest.mark.parametrize(("chunk", "rotations"), [(32, 4), (64, 3), (128, 2)])
def test_fold_is_a_tree_of_ceil_log2_rotations(chunk: int, rotations: int) -> None:
    layout = Layout(10, 1, chunk, 4, chunk // 8)
    assert sum(len(stage) for stage in layout.fold()) == rotations
    # the steps reach exactly the chunks of one output: 0, d, 2d, ... (384 / d) - 1 times d
    reach = {0}
    for stage in layout.fold():
        reach = {r + s for r in reach for s in [0, *stage]}
    assert reach == set(range(0, INPUT_DIM, chunk))


@pytest.mark.parametrize(("rows", "queries", "chunk"),
                         [(10, 1, 32), (100, 1, 32), (10, 8, 32), (1000, 1, 128), (500, 1, 64)])
def test_the_cheapest_width_is_chosen(rows: int, queries: int, chunk: int) -> None:
    """Topic classifiers (K = 10) fold 12 chunks of 32 columns: 16 multiplications, not 64."""
    layout = layout_for(rows, queries)
    assert layout.chunk == chunk
    assert layout.cost() == min(
        Layout(rows, queries, d, b, d // 2 // b).cost()
        for d in WIDTHS for b in BABIES if b <= d // 2)


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
    assert layout.baby * layout.giant == layout.half == layout.chunk // 2
    assert layout.chunk * layout.chunks == INPUT_DIM
    assert layout.per_set * layout.sets >= rows
    # every read (output slots plus half - 1) stays inside the block
    assert layout.repeats * INPUT_DIM + layout.half - 1 <= layout.width
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
