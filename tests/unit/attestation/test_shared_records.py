"""Records replicas share through Redis (gateway/state/shared_attestation.py): only what a
gateway holding the vault secret sealed for exactly this backend and this certificate (or this
collateral URL) opens; anything else, altered by one bit, is RecordUnusable, never used."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from gateway.attestation.evidence import MAX_EVIDENCE_BYTES
from gateway.attestation.fetch import Received
from gateway.errors import RecordUnusable
from gateway.state.shared_attestation import (
    COLLATERAL_PREFIX,
    EVIDENCE_PREFIX,
    Sealer,
    collateral_context,
    decode_collateral,
    decode_received,
    encode_collateral,
    encode_received,
    evidence_context,
)

SECRET = b"vault-secret-shared-by-every-replica-0123"
CERT = hashlib.sha256(b"the backend's certificate").digest()
OTHER_CERT = hashlib.sha256(b"another certificate").digest()
RECEIVED = Received(b'{"evidence": []}', bytes(range(32)), 1_750_000_000.5)


def sealed(context: bytes = evidence_context("tee", CERT)) -> str:
    return Sealer(SECRET).seal(context, encode_received(RECEIVED))


def test_a_record_opens_for_its_backend_and_certificate() -> None:
    opened = Sealer(SECRET).open(evidence_context("tee", CERT), sealed())
    assert decode_received(opened) == RECEIVED


def test_two_seals_of_the_same_evidence_differ() -> None:
    assert sealed() != sealed()  # a fresh IV each time: nothing to compare across records


@pytest.mark.parametrize(("secret", "context"), [
    (b"another-secret-that-no-gateway-of-ours-holds", evidence_context("tee", CERT)),
    (SECRET, evidence_context("other-tee", CERT)),
    (SECRET, evidence_context("tee", OTHER_CERT)),
    (SECRET, collateral_context("https://kds.test/vcek")),
], ids=["wrong key", "wrong backend", "wrong certificate", "another kind of record"])
def test_a_record_does_not_open_anywhere_else(secret: bytes, context: bytes) -> None:
    with pytest.raises(RecordUnusable, match="unauthentic"):
        Sealer(secret).open(context, sealed())


def test_a_flipped_bit_anywhere_is_unauthentic() -> None:
    blob = bytearray(base64.b64decode(sealed()))
    for index in (0, 12, len(blob) // 2, len(blob) - 1):  # IV, ciphertext, tag
        altered = bytearray(blob)
        altered[index] ^= 1
        with pytest.raises(RecordUnusable, match="unauthentic"):
            Sealer(SECRET).open(evidence_context("tee", CERT), base64.b64encode(altered).decode())


@pytest.mark.parametrize("record", ["", "not base64!", base64.b64encode(b"short").decode(),
                                    "{\"evidence\": []}"])
def test_garbage_does_not_open(record: str) -> None:
    with pytest.raises(RecordUnusable):
        Sealer(SECRET).open(evidence_context("tee", CERT), record)


def test_names_are_keyed_and_distinct_per_backend_certificate_and_kind() -> None:
    sealer = Sealer(SECRET)
    names = {sealer.name(EVIDENCE_PREFIX, evidence_context("tee", CERT)),
             sealer.name(EVIDENCE_PREFIX, evidence_context("tee", OTHER_CERT)),
             sealer.name(EVIDENCE_PREFIX, evidence_context("other-tee", CERT)),
             sealer.name(COLLATERAL_PREFIX, collateral_context("https://kds.test/vcek"))}
    assert len(names) == 4
    assert all(n.startswith(("veil:attestation:", "veil:collateral:")) for n in names)
    # Without the secret a name cannot be computed, nor told from a certificate's hash.
    assert Sealer(b"x" * 40).name(EVIDENCE_PREFIX, evidence_context("tee", CERT)) not in names
    assert all(CERT.hex() not in n for n in names)


@pytest.mark.parametrize("payload", [
    b"not json",
    orjson.dumps({"body": "", "nonce": "00" * 31, "at": 1.0}),  # a nonce of another size
    orjson.dumps({"body": "", "nonce": "00" * 32, "at": "inf"}),
    orjson.dumps({"body": "!", "nonce": "00" * 32, "at": 1.0}),
    orjson.dumps({"body": base64.b64encode(bytes(MAX_EVIDENCE_BYTES + 1)).decode(),
                  "nonce": "00" * 32, "at": 1.0}),
    orjson.dumps({"nonce": "00" * 32, "at": 1.0}),
    orjson.dumps([1, 2]),
])
def test_even_a_sealed_record_is_checked_before_use(payload: bytes) -> None:
    with pytest.raises(RecordUnusable, match="malformed"):
        decode_received(payload)


def test_collateral_records_keep_body_chain_and_until() -> None:
    assert decode_collateral(encode_collateral(b"der", b"pem", None)) == (b"der", b"pem", None)
    assert decode_collateral(encode_collateral(b"d", b"", 5.0)) == (b"d", b"", 5.0)
    with pytest.raises(RecordUnusable):
        decode_collateral(orjson.dumps({"body": "ZA==", "chain": "", "until": "soon"}))
