"""Encrypted scores equal numpy's within 1e-5, over many random vectors and K values, for one
query a ciphertext and for several packed into one (each its own)."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal

from gateway.fhe.keys import FheKeys
from gateway.fhe.packing import INPUT_DIM, WIDTHS, Layout, layout_for, query, read_scores
from gateway.fhe.scoring import ModelFile, compile_layout, evaluate
from gateway.fhe.seal import SCALE, checked_ciphertext, load, new_context, to_bytes


def encrypted_scores(keys: FheKeys, model: ModelFile, x: np.ndarray) -> np.ndarray:
    return packed_scores(keys, model, [x], layout_for(model.weights.shape[0]))[0]


def packed_scores(keys: FheKeys, model: ModelFile, xs: list[np.ndarray], layout: Layout
                  ) -> np.ndarray:
    encoder = seal.CKKSEncoder(keys.context)
    plaintext = seal.Plaintext()
    encoder.encode(query(xs, layout).tolist(), SCALE, plaintext)
    sent = to_bytes(keys.encryptor().encrypt_symmetric(plaintext))
    # The scorer: its own context, the evaluation keys only, the bytes it was sent.
    context = new_context()
    galois = seal.GaloisKeys()
    load(galois, context, keys.galois_keys(layout.rotation_steps()))
    received = checked_ciphertext(context, sent, parms_id=context.first_parms_id())
    replies = [to_bytes(block) for block in evaluate(
        received, compile_layout(model, layout, context), seal.Evaluator(context), galois)]
    reply_level = keys.context.first_context_data().next_context_data().parms_id()
    blocks = []
    for raw in replies:
        decrypted = seal.Plaintext()
        keys.decryptor().decrypt(checked_ciphertext(keys.context, raw, parms_id=reply_level),
                                 decrypted)
        blocks.append(np.array(encoder.decode_complex(decrypted)))
    return read_scores(blocks, layout, len(xs))


@pytest.mark.parametrize("rows", [1, 50, 300, 1000, 5000])
def test_reference_set_cosines(keys: FheKeys, rows: int) -> None:
    rng = np.random.default_rng(rows)
    weights = rng.standard_normal((rows, 384))
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    model = ModelFile("m", "reference_set", weights, ("x",) * rows, None, "max")
    for _ in range(3):
        x = rng.standard_normal(384)
        x /= np.linalg.norm(x)
        assert np.abs(encrypted_scores(keys, model, x) - weights @ x).max() < 1e-5


def test_linear_model_with_bias(keys: FheKeys) -> None:
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((7, 384)) / 10
    bias = rng.standard_normal(7)
    model = ModelFile("c", "linear", weights, tuple("abcdefg"), bias, "max")
    x = rng.standard_normal(384)
    x /= np.linalg.norm(x)
    assert np.abs(encrypted_scores(keys, model, x) - (weights @ x + bias)).max() < 1e-5


@pytest.mark.parametrize(("rows", "queries", "count"), [(1000, 8, 8), (1000, 8, 5), (300, 4, 3),
                                                        (1281, 2, 2), (7, 8, 8)])
def test_packed_queries_each_get_their_own_cosines(keys: FheKeys, rows: int, queries: int,
                                                   count: int) -> None:
    rng = np.random.default_rng(rows * queries + count)
    weights = rng.standard_normal((rows, INPUT_DIM))
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    model = ModelFile("m", "reference_set", weights, ("x",) * rows, None, "max")
    xs = [x / np.linalg.norm(x) for x in rng.standard_normal((count, INPUT_DIM))]
    scores = packed_scores(keys, model, xs, layout_for(rows, queries))
    assert np.abs(scores - np.stack([weights @ x for x in xs])).max() < 1e-5


def test_packed_linear_model_adds_each_bias_once(keys: FheKeys) -> None:
    rng = np.random.default_rng(9)
    weights = rng.standard_normal((7, INPUT_DIM)) / 10
    bias = rng.standard_normal(7)
    model = ModelFile("c", "linear", weights, tuple("abcdefg"), bias, "max")
    xs = [x / np.linalg.norm(x) for x in rng.standard_normal((8, INPUT_DIM))]
    scores = packed_scores(keys, model, xs, layout_for(7, 8))
    assert np.abs(scores - np.stack([weights @ x + bias for x in xs])).max() < 1e-5


@pytest.mark.parametrize("chunk", WIDTHS)
@pytest.mark.parametrize(("rows", "queries", "count"), [(700, 1, 1), (150, 4, 3)])
def test_every_chunk_width_adds_the_bias_once_and_folds_exactly(
        keys: FheKeys, chunk: int, rows: int, queries: int, count: int) -> None:
    """Each d, forced (several output sets where it is narrow), through real CKKS: the fold's
    rotation tree with the keys rotation_steps() names and nothing else."""
    rng = np.random.default_rng(chunk + rows)
    weights = rng.standard_normal((rows, INPUT_DIM)) / 10
    bias = rng.standard_normal(rows)
    model = ModelFile("c", "linear", weights, ("x",) * rows, bias, "max")
    xs = [x / np.linalg.norm(x) for x in rng.standard_normal((count, INPUT_DIM))]
    layout = Layout(rows, queries, chunk, 4, chunk // 8)
    scores = packed_scores(keys, model, xs, layout)
    assert np.abs(scores - np.stack([weights @ x + bias for x in xs])).max() < 1e-5
