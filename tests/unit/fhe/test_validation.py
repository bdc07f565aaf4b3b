"""Replies come from a party we do not trust, into the process that holds the secret key:
malformed, truncated, oversized, inflating, wrong-level and wrong-key replies are refused before
(or, for a wrong key, right after) decryption, without crashing."""

from __future__ import annotations

import base64
import contextlib
import struct
from typing import Any

import numpy as np
import pytest
import tenseal.sealapi as seal
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import CiphertextError, ScorerError
from gateway.fhe.client import ModelInfo, ScorerClient
from gateway.fhe.keys import FheKeys, KeyStore
from gateway.fhe.packing import layout_for
from gateway.fhe.seal import HEADER, SCALE, checked_ciphertext, to_bytes


def reply_level(keys: FheKeys) -> Any:
    return keys.context.first_context_data().next_context_data().parms_id()


def valid_reply(keys: FheKeys, value: float = 0.5) -> bytes:
    """A well-formed reply-level ciphertext, as the scorer would send."""
    encoder = seal.CKKSEncoder(keys.context)
    plaintext = seal.Plaintext()
    encoder.encode([value] * 4096, SCALE * SCALE, plaintext)
    ciphertext = seal.Ciphertext()
    keys.encryptor().encrypt_symmetric(plaintext, ciphertext)
    seal.Evaluator(keys.context).rescale_to_next_inplace(ciphertext)
    return to_bytes(ciphertext)


def tampered(raw: bytes) -> bytes:
    return raw[:2000] + bytes(3000) + raw[5000:]


def test_valid_reply_loads(keys: FheKeys) -> None:
    assert checked_ciphertext(keys.context, valid_reply(keys), parms_id=reply_level(keys))


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda b: b[:100], "header says"),
    (lambda b: b[:10], "ciphertext of 10 bytes"),
    (lambda b: b + b"\0" * 10, "header says"),
    (lambda b: b"\0\0" + b[2:], "not a SEAL 4 object"),
    (lambda b: b[:3] + b"\x03" + b[4:], "not a SEAL 4 object"),
    (lambda b: b[:5] + b"\x01" + b[6:], "unsupported compression 1"),
    (lambda b: b * 3, "limit"),
])
def test_malformed_replies_are_refused(keys: FheKeys, mutate: Any, reason: str) -> None:
    with pytest.raises(CiphertextError, match=reason):
        checked_ciphertext(keys.context, mutate(valid_reply(keys)), parms_id=reply_level(keys))


def test_a_small_reply_cannot_inflate(keys: FheKeys) -> None:
    bomb_body = zstandard.ZstdCompressor().compress(bytes(50 * 1024 * 1024))
    bomb = HEADER.pack(0xA15E, 16, 4, 3, 2, 0, 16 + len(bomb_body)) + bomb_body
    assert len(bomb) < 300 * 1024
    with pytest.raises(CiphertextError, match="inflates beyond"):
        checked_ciphertext(keys.context, bomb, parms_id=reply_level(keys))


def test_a_query_level_ciphertext_is_not_a_reply(keys: FheKeys) -> None:
    encoder = seal.CKKSEncoder(keys.context)
    plaintext = seal.Plaintext()
    encoder.encode([0.1] * 4096, SCALE, plaintext)
    fresh = seal.Ciphertext()
    keys.encryptor().encrypt_symmetric(plaintext, fresh)
    with pytest.raises(CiphertextError, match="unexpected level"):
        checked_ciphertext(keys.context, to_bytes(fresh), parms_id=reply_level(keys))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 131_000), st.integers(1, 255)), min_size=1,
                max_size=8), st.integers(0, 131_000))
def test_fuzzed_replies_never_crash(keys: FheKeys, flips: list[tuple[int, int]],
                                    cut: int) -> None:
    raw = bytearray(valid_reply(keys))
    for offset, mask in flips:
        raw[offset % len(raw)] ^= mask
    data = bytes(raw[:max(cut, 17)]) if cut < len(raw) else bytes(raw)
    # Refused cleanly, or (a flip inside coefficients) a valid ciphertext: never a crash.
    with contextlib.suppress(CiphertextError):
        checked_ciphertext(keys.context, data, parms_id=reply_level(keys))


class _Client(ScorerClient):
    """Only the reply check, without a network."""

    def __init__(self, keys: FheKeys) -> None:
        self._keys = keys
        self._reply_level = reply_level(keys)


def info(rows: int = 3) -> ModelInfo:
    return ModelInfo("topics", "reference_set", rows, ("a", "b", "c")[:rows], "max", (1,),
                     tuple(layout_for(rows).rotation_steps()))


def reply(keys: FheKeys, texts: list[str], **fields: Any) -> dict[str, Any]:
    return {"model": "topics", "key_id": keys.key_id, "queries": 1, "ciphertexts": texts,
            **fields}


def decrypt(client: ScorerClient, document: dict[str, Any]) -> np.ndarray:
    return client._decrypt(document, info(), layout_for(3), 1)


def test_reply_checks_before_decryption(keys: FheKeys) -> None:
    client = _Client(keys)
    good = base64.b64encode(valid_reply(keys)).decode()
    assert np.allclose(decrypt(client, reply(keys, [good])), 0.5, atol=1e-4)
    for bad, reason in [
        (reply(keys, [good, good]), "must hold 1 ciphertexts"),
        (reply(keys, []), "must hold 1"),
        (reply(keys, [good], key_id="fhe-other"), "another key, model"),
        (reply(keys, [good], model="other"), "another key, model"),
        (reply(keys, [good], queries=8), "another key, model or packing"),
        (reply(keys, ["!!notbase64"]), "refused before decryption"),
        (reply(keys, [base64.b64encode(b"x" * 64).decode()]), "refused before decryption"),
        (reply(keys, [base64.b64encode(valid_reply(keys, 7.0)).decode()]), "out of range"),
        # coefficients overwritten: still a well-formed ciphertext, caught after decryption
        (reply(keys, [base64.b64encode(tampered(valid_reply(keys))).decode()]), "out of range"),
    ]:
        with pytest.raises(ScorerError, match=reason):
            decrypt(client, bad)


def test_reply_under_another_key_is_caught_by_the_range_check(keys: FheKeys,
                                                              store: KeyStore) -> None:
    store.init()
    other = store.load()
    wrong = base64.b64encode(valid_reply(other)).decode()
    client = _Client(keys)
    with pytest.raises(ScorerError, match="out of range"):
        decrypt(client, reply(keys, [wrong]))
    assert struct.calcsize("<HBBBBHQ") == HEADER.size
