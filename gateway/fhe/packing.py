"""How a matrix-vector product y = W x is laid out in CKKS slots. Pure numpy: the scorer turns
these arrays into plaintexts, the gateway encodes the query and reads the scores; tests check
the layout by simulating rotations with `np.roll`.

Slots: 4096 complex (N = 8192). The input (384 dims) is padded to n = 512 and repeated 8 times,
so rotating it by i reads column (t + i) mod n in slot t. Diagonal method: slot t accumulates
sum_i D_i[t] * x[(t + i) mod n] over d diagonals, a window of d columns. For K rows we fold:
each output gets c = n / d slots (chunks of d columns) which a rotate-and-add by d, 2d, ...
sums; outputs per ciphertext = 4096 / c. Complex packing halves the work again: the query is
z = x + i*rot(x, d/2), the plaintexts P_i = D_i - i*D_(i+d/2), and Re(P_i * rot(z, i)) covers
two diagonals at once. Baby-step/giant-step over the d/2 complex diagonals: B baby rotations of
the query (shared by every output block) and G giant rotations per block, B * G = d/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SLOTS = 4096
WIDTH = 512  # the input, padded
INPUT_DIM = 384
COPIES = SLOTS // WIDTH

Complex = npt.NDArray[np.complex128]
Real = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Layout:
    rows: int  # K, the outputs
    diagonals: int  # d: columns per chunk (real diagonals)
    chunks: int  # c = WIDTH / d: slots summed into one output
    blocks: int  # ciphertexts of output
    baby: int  # B
    giant: int  # G, with B * G = d / 2

    @property
    def per_block(self) -> int:
        return SLOTS // self.chunks

    def rotation_steps(self) -> list[int]:
        """Every rotation the scorer needs for this layout (the keys the gateway must send)."""
        steps = set(range(1, self.baby))
        steps |= {self.baby * j for j in range(1, self.giant)}
        steps |= {self.diagonals * (1 << s) for s in range(int(math.log2(self.chunks)))}
        return sorted(steps)


def layout_for(rows: int) -> Layout:
    """Fewest diagonals that hold `rows` outputs: d = WIDTH * K' / SLOTS (at least 32)."""
    if rows < 1:
        raise ValueError("a model needs at least one row")
    per_block = min(SLOTS, max(SLOTS * 32 // WIDTH, 1 << math.ceil(math.log2(rows))))
    diagonals = WIDTH * per_block // SLOTS
    half = diagonals // 2
    baby = 1 << math.ceil(math.log2(math.isqrt(half))) if half > 1 else 1
    baby = min(baby, half)
    return Layout(rows=rows, diagonals=diagonals, chunks=WIDTH // diagonals,
                  blocks=math.ceil(rows / per_block), baby=baby, giant=half // baby)


def slot_of(layout: Layout, output: int, chunk: int) -> int:
    """Slot holding `chunk` of `output` within its block: block a of WIDTH slots, chunk q at
    q*d, offset e, for output a*d + e."""
    a, e = divmod(output, layout.diagonals)
    return a * WIDTH + chunk * layout.diagonals + e


def query(x: Real, layout: Layout) -> Complex:
    """The gateway's plaintext: the padded input, repeated, with the half-shifted copy."""
    if x.shape != (INPUT_DIM,):
        raise ValueError(f"expected a {INPUT_DIM}-dim vector, got {x.shape}")
    padded = np.zeros(WIDTH)
    padded[:INPUT_DIM] = x
    repeated = np.tile(padded, COPIES)
    return repeated + 1j * np.roll(repeated, -(layout.diagonals // 2))


def diagonals(weights: Real, layout: Layout) -> list[list[Complex]]:
    """Per output block, the complex plaintexts in BSGS order (giant j, baby b), each already
    rotated right by j*B so one giant rotation after the inner sum aligns it."""
    rows = weights.shape[0]
    padded = np.zeros((rows, WIDTH))
    padded[:, :weights.shape[1]] = weights
    d, half = layout.diagonals, layout.diagonals // 2
    out: list[list[Complex]] = []
    slots = np.arange(SLOTS)
    for block in range(layout.blocks):
        # Which (output, column) each slot reads for real diagonal i: output by slot position.
        a, rest = np.divmod(slots, WIDTH)
        q, e = np.divmod(rest, d)
        output = block * layout.per_block + a * d + e
        valid = (output < rows) & (q < layout.chunks)
        safe_output = np.where(valid, output, 0)

        def real_diagonal(i: int, rows: npt.NDArray[np.int64] = safe_output,
                          keep: npt.NDArray[np.bool_] = valid) -> Real:
            values = padded[rows, (slots + i) % WIDTH]
            return np.where(keep, values, 0.0)

        plaintexts = []
        for j in range(layout.giant):
            for b in range(layout.baby):
                i = j * layout.baby + b
                p = real_diagonal(i) - 1j * real_diagonal(i + half)
                plaintexts.append(np.roll(p, j * layout.baby))
        out.append(plaintexts)
    return out


def read_scores(blocks: list[Complex], layout: Layout) -> Real:
    """The K outputs from the decrypted blocks (real parts, at chunk 0 of each output)."""
    scores = np.empty(layout.rows)
    for k in range(layout.rows):
        block, local = divmod(k, layout.per_block)
        scores[k] = blocks[block][slot_of(layout, local, 0)].real
    return scores


def simulate(x: Real, weights: Real, layout: Layout) -> Real:
    """The scorer's computation in numpy (rotation = np.roll left): for tests and the bench."""
    z = query(x, layout)
    baby = [np.roll(z, -b) for b in range(layout.baby)]
    results = []
    for plaintexts in diagonals(weights, layout):
        total = np.zeros(SLOTS, dtype=complex)
        for j in range(layout.giant):
            inner = sum(plaintexts[j * layout.baby + b] * baby[b] for b in range(layout.baby))
            total += np.roll(inner, -j * layout.baby)
        for s in range(int(math.log2(layout.chunks))):
            total += np.roll(total, -layout.diagonals * (1 << s))
        results.append(total)
    return read_scores(results, layout)
