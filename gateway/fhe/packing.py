"""How y = W x is laid out in CKKS slots, for one query or several packed into one ciphertext.
Pure numpy: the scorer turns these arrays into plaintexts, the gateway encodes the queries and
reads the scores; tests check the layout by simulating rotations with `np.roll`.

Slots: 4096 complex (N = 8192), cut into `queries` blocks (1, 2, 4 or 8) of `width` slots, one
query a block; the gateway alone knows which block is whose. In its block the 384-dim input
repeats with period 384 (slot p holds x[p mod 384]), so every rotation the scorer makes reads
the block's own query as long as a read stays inside the block: outputs are placed only where
that holds (`repeats` stretches of 384 slots, the rest of the block is read-only tail).

Diagonal method, d columns a chunk (32, 64 or 128: a divisor of 384, chosen per layout), 384 / d
chunks an output: in a stretch, output e is summed in the slots e, e + d, e + 2d, ... (chunk q
reads columns q*d + e .. + d - 1, mod 384), then folded by a rotation tree (`fold`: doubling
while the chunk count is even, then the odd factor's shifts: 12 chunks in 4 rotations, 6 in 3,
3 in 2). Complex packing halves the multiplications: the query is z = x + i*x(shifted d/2), the
plaintexts P_i = D_i - i*D_(i+d/2), and Re(P_i * rot(z, i)) covers two diagonals at once (d/2
complex diagonals). Baby-step/giant-step: B baby rotations of the query, shared by every output
set, and G giant rotations per set, B * G = d/2. An output set is one reply ciphertext: per
query, `per_set` = repeats * d rows. A small d costs few multiplications but holds few rows a
set and folds longer; `layout_for` weighs the two with the scorer's measured costs, so K = 10
takes d = 32 (16 multiplications) and K = 1000 d = 128 (one set instead of four). Packing Q
queries shares the baby steps, the encryption and the round trip among them; the extra sets
its narrower blocks need cost their giant and fold steps and multiplications.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SLOTS = 4096
INPUT_DIM = 384
WIDTHS = (32, 64, 128)  # d, columns a chunk: divisors of INPUT_DIM
PACKINGS = (1, 2, 4, 8)  # queries a ciphertext
BABIES = (4, 8, 16)  # baby-step counts considered (each needs B - 1 rotation keys)
# The scorer's cost of a pass, in units of 0.05 ms (measured: a rotation 1.7-2.4 ms, a
# ciphertext-plaintext multiplication 0.13-0.16 ms), to choose a layout by.
ROTATION_COST = 40
MULTIPLY_COST = 3

Complex = npt.NDArray[np.complex128]
Real = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Layout:
    rows: int  # K, the outputs a query
    queries: int  # blocks: queries packed in one ciphertext
    chunk: int  # d, columns a chunk (one of WIDTHS)
    baby: int  # B
    giant: int  # G, with B * G = half

    @property
    def chunks(self) -> int:
        """Slots summed into one output."""
        return INPUT_DIM // self.chunk

    @property
    def half(self) -> int:
        """Complex diagonals."""
        return self.chunk // 2

    @property
    def width(self) -> int:
        return SLOTS // self.queries

    @property
    def repeats(self) -> int:
        """Stretches of 384 output slots a block, all reads (up to half - 1 past) inside it."""
        return (self.width - self.half + 1) // INPUT_DIM

    @property
    def per_set(self) -> int:
        return self.repeats * self.chunk

    @property
    def sets(self) -> int:
        """Reply ciphertexts."""
        return math.ceil(self.rows / self.per_set)

    @property
    def plaintexts(self) -> int:
        return self.sets * self.half

    def fold(self) -> list[list[int]]:
        """The rotation tree that sums an output's chunks into its chunk 0, in stages: each
        stage adds to the running sum its own rotations by these steps. Doubling while the
        count left is even, then one stage of the odd rest's shifts: ceil(log2(chunks))
        rotations for 3, 6 and 12 chunks, and no read past the output's own stretch."""
        stages, span, left = [], self.chunk, self.chunks
        while left % 2 == 0:
            stages.append([span])
            span, left = span * 2, left // 2
        if left > 1:
            stages.append([span * k for k in range(1, left)])
        return stages

    def rotations(self) -> int:
        """Rotations a pass: the baby steps once, then per set its giant steps and its fold."""
        folds = sum(len(stage) for stage in self.fold())
        return self.baby - 1 + self.sets * (self.giant - 1 + folds)

    def cost(self) -> int:
        return self.rotations() * ROTATION_COST + self.plaintexts * MULTIPLY_COST

    def rotation_steps(self) -> list[int]:
        """Every rotation the scorer makes for this layout (the keys the gateway sends)."""
        steps = set(range(1, self.baby))
        steps |= {self.baby * j for j in range(1, self.giant)}
        steps |= {step for stage in self.fold() for step in stage}
        return sorted(steps)


def layout_for(rows: int, queries: int = 1) -> Layout:
    """The chunk width and baby-step count of the cheapest pass (then the narrower, then the
    fewer baby steps): gateway and scorer both derive it from K and the packing alone."""
    if rows < 1:
        raise ValueError("a model needs at least one row")
    if queries not in PACKINGS:
        raise ValueError(f"queries a ciphertext is one of {PACKINGS}, not {queries}")
    candidates = [Layout(rows, queries, chunk, baby, chunk // 2 // baby)
                  for chunk in WIDTHS for baby in BABIES if baby <= chunk // 2]
    return min(candidates, key=lambda c: (c.cost(), c.chunk, c.baby))


def passes_for(count: int, packings: Sequence[int] = PACKINGS) -> list[int]:
    """Queries a pass for `count` queries: the largest packing that the rest fills, again and
    again (5 = 4 + 1), so no block is padded: a pass costs about the same whether its blocks
    are full or not, and the passes run side by side on the scorer's workers."""
    sizes = []
    while count > 0:
        size = max(q for q in packings if q <= count)
        sizes.append(size)
        count -= size
    return sizes


def _positions(layout: Layout) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per slot: its output row within a set (or -1: not an output slot) and its place in its
    stretch (s = chunk * d + e: the columns it reads start at s)."""
    slots = np.arange(SLOTS)
    stretch, s = np.divmod(slots % layout.width, INPUT_DIM)
    row = np.where(stretch < layout.repeats, stretch * layout.chunk + s % layout.chunk, -1)
    return row, s


def query(xs: Sequence[Real], layout: Layout) -> Complex:
    """The gateway's plaintext: query k in block k (empty blocks zero), with the copy of each
    shifted by half (d/2) within its own block."""
    if not 1 <= len(xs) <= layout.queries:
        raise ValueError(f"{len(xs)} queries for a layout of {layout.queries}")
    for x in xs:
        if x.shape != (INPUT_DIM,):
            raise ValueError(f"expected a {INPUT_DIM}-dim vector, got {x.shape}")
    local = np.arange(layout.width)
    z = np.zeros(SLOTS, dtype=complex)
    for k, x in enumerate(xs):
        z[k * layout.width:(k + 1) * layout.width] = (
            x[local % INPUT_DIM] + 1j * x[(local + layout.half) % INPUT_DIM])
    return z


def diagonals(weights: Real, layout: Layout) -> list[list[Complex]]:
    """Per output set, the complex plaintexts in BSGS order (giant j, baby b), each already
    rotated right by j*B so one giant rotation after the inner sum aligns it. Every block gets
    the same values: each block's query meets the same rows."""
    row, s = _positions(layout)
    out: list[list[Complex]] = []
    for index in range(layout.sets):
        rows = index * layout.per_set + row
        valid = (row >= 0) & (rows < weights.shape[0])
        safe = np.where(valid, rows, 0)

        def real_diagonal(i: int, rows: npt.NDArray[np.int64] = safe,
                          keep: npt.NDArray[np.bool_] = valid) -> Real:
            return np.where(keep, weights[rows, (s + i) % INPUT_DIM], 0.0)

        plaintexts = []
        for j in range(layout.giant):
            for b in range(layout.baby):
                i = j * layout.baby + b
                p = real_diagonal(i) - 1j * real_diagonal(i + layout.half)
                plaintexts.append(np.roll(p, j * layout.baby))
        out.append(plaintexts)
    return out


def output_slots(layout: Layout) -> npt.NDArray[np.int64]:
    """Per set-local row, its slot in block 0 (chunk 0 of its stretch); block k adds k*width."""
    stretch, e = np.divmod(np.arange(layout.per_set), layout.chunk)
    return stretch * INPUT_DIM + e


def bias_slots(bias: Real, layout: Layout, index: int) -> Real:
    """Set `index`'s bias at each output's slot in every block (the fold adds it once)."""
    slots = np.zeros(SLOTS)
    rows = index * layout.per_set + np.arange(layout.per_set)
    keep = rows < layout.rows
    for k in range(layout.queries):
        slots[k * layout.width + output_slots(layout)[keep]] = bias[rows[keep]]
    return slots


def read_scores(sets: Sequence[Complex], layout: Layout, count: int) -> Real:
    """[count, K]: query k's outputs from block k of the decrypted sets (real parts), and
    nothing from any other block."""
    if len(sets) != layout.sets:
        raise ValueError(f"{len(sets)} sets for a layout of {layout.sets}")
    scores = np.empty((count, layout.sets * layout.per_set))
    offsets = output_slots(layout)
    for k in range(count):
        for index, values in enumerate(sets):
            scores[k, index * layout.per_set:(index + 1) * layout.per_set] = (
                values[k * layout.width + offsets].real)
    return scores[:, :layout.rows]


def simulate(xs: Sequence[Real], weights: Real, layout: Layout) -> Real:
    """The scorer's computation in numpy (rotation = np.roll left): for tests and the bench."""
    z = query(xs, layout)
    baby = [np.roll(z, -b) for b in range(layout.baby)]
    results: list[Complex] = []
    for plaintexts in diagonals(weights, layout):
        total = np.zeros(SLOTS, dtype=complex)
        for j in range(layout.giant):
            inner = sum(plaintexts[j * layout.baby + b] * baby[b] for b in range(layout.baby))
            total += np.roll(inner, -j * layout.baby)
        for stage in layout.fold():
            total = total + sum(np.roll(total, -step) for step in stage)
        results.append(total)
    return read_scores(results, layout, len(xs))
