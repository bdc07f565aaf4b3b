"""`veil scorer bench`: one 384-dim query against K rows, side by side in one run: numpy (the
floor), TenSEAL's built-in `matmul` (optional: slow, and wrong once 384 + K exceeds N/2), and
Veil's scorer (BSGS over precomputed diagonals) in a separate process, with encryption and
decryption in the gateway role. Prints `k numpy_ms matmul_ms veil_ms max_abs_err`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as seal

from gateway.fhe.packing import layout_for, query, read_scores
from gateway.fhe.scoring import CompiledModel, ModelFile, compile_layout, evaluate
from gateway.fhe.seal import SCALE, checked_ciphertext, galois_element, load, new_context, to_bytes


@dataclass
class _Scorer:
    context: seal.SEALContext
    keys: seal.GaloisKeys
    compiled: CompiledModel
    evaluator: seal.Evaluator


_scorer: list[_Scorer] = []  # the state of the scorer process


def _prepare(weights: npt.NDArray[np.float64], galois: bytes) -> None:
    context = new_context()
    keys = seal.GaloisKeys()
    load(keys, context, galois)
    model = ModelFile("bench", "reference_set", weights,
                      tuple("x" for _ in range(weights.shape[0])), None, "max")
    compiled = compile_layout(model, layout_for(weights.shape[0]), context)
    _scorer.append(_Scorer(context, keys, compiled, seal.Evaluator(context)))


def _evaluate(query_bytes: bytes, repeats: int) -> tuple[float, list[bytes]]:
    """Scorer side: median evaluation time (ms) and the reply."""
    scorer = _scorer[0]
    ciphertext = checked_ciphertext(scorer.context, query_bytes,
                                    parms_id=scorer.context.first_parms_id())
    times, out = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        out = evaluate(ciphertext, scorer.compiled, scorer.evaluator, scorer.keys)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), [to_bytes(block) for block in out]


def _median_ms(action: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def run_bench(ks: list[int], *, compare_matmul: bool = False, repeats: int = 5) -> None:
    rng = np.random.default_rng(7)
    context = new_context()
    secret = seal.KeyGenerator(context).secret_key()
    encoder, encryptor = seal.CKKSEncoder(context), seal.Encryptor(context, secret)
    decryptor = seal.Decryptor(context, secret)
    reply_level = context.first_context_data().next_context_data().parms_id()
    print(f"{'k':>6} {'numpy_ms':>10} {'matmul_ms':>10} {'veil_ms':>10} {'max_abs_err':>12}")
    spawn = multiprocessing.get_context("spawn")
    for k in ks:
        weights = rng.standard_normal((k, 384))
        weights /= np.linalg.norm(weights, axis=1, keepdims=True)
        x = rng.standard_normal(384)
        x /= np.linalg.norm(x)
        numpy_ms = _median_ms(functools.partial(np.dot, weights, x), 50)
        matmul_ms = _tenseal_matmul_ms(weights, x) if compare_matmul else float("nan")
        layout = layout_for(k)
        generator = seal.KeyGenerator(context, secret)
        galois = to_bytes(generator.create_galois_keys(
            [galois_element(s) for s in layout.rotation_steps()]))
        plaintext = seal.Plaintext()
        encoder.encode(query([x], layout).tolist(), SCALE, plaintext)
        query_bytes = to_bytes(encryptor.encrypt_symmetric(plaintext))
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn, initializer=_prepare,
                                                    initargs=(weights, galois)) as scorer:
            veil_ms, reply = scorer.submit(_evaluate, query_bytes, repeats).result()
        blocks = []
        for raw in reply:
            decrypted = seal.Plaintext()
            decryptor.decrypt(checked_ciphertext(context, raw, parms_id=reply_level), decrypted)
            blocks.append(np.array(encoder.decode_complex(decrypted)))
        error = float(np.abs(read_scores(blocks, layout, 1)[0] - weights @ x).max())
        print(f"{k:>6} {numpy_ms:>10.4f} {matmul_ms:>10.2f} {veil_ms:>10.2f} {error:>12.2e}")


def _tenseal_matmul_ms(weights: npt.NDArray[np.float64], x: npt.NDArray[np.float64]) -> float:
    import tenseal as ts  # noqa: PLC0415

    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    context.global_scale = SCALE
    context.generate_galois_keys()
    vector = ts.ckks_vector(context, x.tolist())
    matrix = weights.T.tolist()
    return _median_ms(lambda: vector.matmul(matrix), 3)
