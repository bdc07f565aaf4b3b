"""The slot layout, checked by simulating the scorer's rotations in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.fhe.packing import SLOTS, layout_for, simulate


@pytest.mark.parametrize("rows", [1, 31, 32, 33, 300, 511, 512, 513, 1000, 2048, 4096, 4097,
                                  10_000])
def test_simulated_product_equals_numpy(rows: int) -> None:
    rng = np.random.default_rng(rows)
    weights = rng.standard_normal((rows, 384))
    x = rng.standard_normal(384)
    assert np.abs(simulate(x, weights, layout_for(rows)) - weights @ x).max() < 1e-9


@pytest.mark.parametrize("rows", [10, 1000, 10_000])
def test_layout_arithmetic(rows: int) -> None:
    layout = layout_for(rows)
    assert layout.baby * layout.giant * 2 == layout.diagonals
    assert layout.per_block * layout.blocks >= rows
    assert layout.per_block * layout.chunks == SLOTS
    assert all(0 < step < SLOTS for step in layout.rotation_steps())


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        layout_for(0)
    with pytest.raises(ValueError, match="384-dim"):
        simulate(np.zeros(100), np.zeros((3, 384)), layout_for(3))
