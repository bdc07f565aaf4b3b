"""Attested key release without a network: the reply's encryption, the key service's sealed
store, its request checks, and the gateway's key_release settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import CustodyError, EvidenceError, ReleaseRefused
from gateway.keys.release import open_keys, raw_public, release_binding, seal_keys
from gateway.keys.sealed_store import SealedStore
from gateway.keys.service import parsed
from gateway.keys.sources import GatewayKeys
from gateway.settings import Settings
from tests.servers import settings_for

NONCE = bytes(range(32))
KEYS = {"audit": os.urandom(32), "hash": os.urandom(32)}
IDENTITY = X25519PrivateKey.generate()  # the key service's
IDENTITY_PUBLIC = raw_public(IDENTITY)
SERVICE_KEY = base64.b64encode(IDENTITY_PUBLIC).decode()


def test_a_reply_opens_with_the_gateways_key_and_shows_no_key() -> None:
    gateway = X25519PrivateKey.generate()
    reply = seal_keys(raw_public(gateway), NONCE, KEYS, IDENTITY)
    assert open_keys(gateway, NONCE, ["hash", "audit"], reply, IDENTITY_PUBLIC) == KEYS
    shown = orjson.dumps(reply)
    assert all(base64.b64encode(k) not in shown and k.hex().encode() not in shown
               for k in KEYS.values())


def test_a_reply_tampered_with_does_not_open() -> None:
    gateway = X25519PrivateKey.generate()
    reply = seal_keys(raw_public(gateway), NONCE, KEYS, IDENTITY)
    raw = bytearray(base64.b64decode(reply["ciphertext"]))
    raw[0] ^= 1
    with pytest.raises(EvidenceError, match="does not open"):
        open_keys(gateway, NONCE, KEYS, {**reply, "ciphertext": base64.b64encode(raw).decode()},
                  IDENTITY_PUBLIC)
    with pytest.raises(EvidenceError, match="ephemeral_key"):
        open_keys(gateway, NONCE, KEYS, {**reply, "ephemeral_key": "AAAA"}, IDENTITY_PUBLIC)


def test_a_reply_made_by_another_service_does_not_open() -> None:
    """A TLS-terminating proxy sees the gateway's ephemeral key and could encrypt keys of its
    own choosing to it: without the service's identity key, that reply does not open."""
    gateway = X25519PrivateKey.generate()
    forged = seal_keys(raw_public(gateway), NONCE, KEYS, X25519PrivateKey.generate())
    with pytest.raises(EvidenceError, match="or by another service"):
        open_keys(gateway, NONCE, KEYS, forged, IDENTITY_PUBLIC)


def test_a_gateway_key_with_no_shared_secret_is_refused_not_used() -> None:
    """The all-zero point (a low-order key) would make X25519's result public."""
    with pytest.raises(ValueError):  # noqa: PT011 (cryptography's)
        seal_keys(bytes(32), NONCE, KEYS, IDENTITY)


def test_the_binding_covers_nonce_tls_key_and_ephemeral_key() -> None:
    one = release_binding(NONCE, b"k" * 32, b"e" * 32)
    assert len(one) == 64
    assert one != release_binding(bytes(32), b"k" * 32, b"e" * 32)
    assert one != release_binding(NONCE, b"K" * 32, b"e" * 32)
    assert one != release_binding(NONCE, b"k" * 32, b"E" * 32)


def test_the_store_seals_at_rest_and_never_replaces_a_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    store = SealedStore(path, AESGCM(bytes(32)))
    assert store.seal_missing(["audit", "hash"]) == ["audit", "hash"]
    first = store.open(["audit", "hash"])
    assert store.seal_missing(["audit", "vault"]) == ["vault"]
    assert store.open(["audit", "hash"]) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert all(base64.b64encode(k) not in path.read_bytes() for k in first.values())


def test_the_store_refuses_another_master_key_and_a_key_moved_under_another_name(
        tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    SealedStore(path, AESGCM(bytes(32))).seal_missing(["audit", "hash"])
    with pytest.raises(CustodyError, match="does not open under the store's master key"):
        SealedStore(path, AESGCM(bytes([1]) * 32)).open(["audit"])
    document = orjson.loads(path.read_bytes())
    document["keys"]["hash"] = document["keys"]["audit"]
    path.write_bytes(orjson.dumps(document))
    with pytest.raises(CustodyError, match="'hash' key"):
        SealedStore(path, AESGCM(bytes(32))).open(["hash"])
    with pytest.raises(CustodyError, match="holds no 'fhe' key"):
        SealedStore(path, AESGCM(bytes(32))).open(["fhe"])


def request(**fields: object) -> bytes:
    body = {"nonce": NONCE.hex(), "keys": ["audit"], "certificate": "", "ephemeral_key": "",
            "evidence": [{"format": "sev-snp"}], **fields}
    return orjson.dumps(body)


@pytest.mark.parametrize(("body", "status", "reason"), [
    (b"not json", 400, "the request is not JSON"),
    (b"[]", 400, "the request is not a JSON object"),
    (request(nonce="00"), 400, "nonce must be 64 hex digits"),
    (request(keys=[]), 400, "keys must be a list of distinct key names"),
    (request(keys=["audit", "audit"]), 400, "keys must be a list of distinct key names"),
    (request(keys=["vault"]), 403, "this service releases only audit, hash"),
    (request(evidence=[]), 400, "evidence must be a list of evidence parts"),
    (request(certificate="bm90IGEgY2VydA=="), 400, "certificate: not a DER X.509 certificate"),
])
def test_a_malformed_release_request_is_refused(body: bytes, status: int, reason: str) -> None:
    with pytest.raises(ReleaseRefused) as refused:
        parsed(body, ["audit", "hash"])
    assert (refused.value.status, refused.value.reason) == (status, reason)


def released(**overrides: object) -> Settings:
    sections: dict[str, object] = {
        "listen": {"tls_cert_file": "gw.crt", "tls_key_file": "gw.key"},
        "key_release": {"url": "https://keys.example:8445", "keys": ["audit"],
                        "service_key": SERVICE_KEY}, **overrides}
    return settings_for([{"name": "b", "url": "http://127.0.0.1:9"}], **sections)


def problems(**overrides: object) -> str:
    with pytest.raises(ValueError) as info:  # noqa: PT011 (pydantic's, its text checked)
        released(**overrides)
    return str(info.value)


def test_a_released_audit_key_is_a_source_and_the_only_one() -> None:
    settings = released(audit={"enabled": True})
    assert settings.released("audit")
    assert not settings.released("hash")
    assert "audit is released by the key service" in problems(
        audit={"enabled": True, "key_env": "AUDIT_KEY"})


def test_key_release_needs_the_tls_key_it_binds_and_vault_its_store() -> None:
    assert "needs listen.tls_cert_file" in problems(listen={})
    assert "vault needs state.redis_url" in problems(
        key_release={"url": "https://keys.example", "keys": ["vault"],
                     "service_key": SERVICE_KEY})
    assert "each key once" in problems(
        key_release={"url": "https://keys.example", "keys": ["audit", "audit"],
                     "service_key": SERVICE_KEY})
    assert "String should match pattern" in problems(
        key_release={"url": "http://keys.example", "keys": ["audit"],
                     "service_key": SERVICE_KEY})
    assert "String should match pattern" in problems(
        key_release={"url": "https://keys.example", "keys": ["audit"],
                     "service_key": base64.b64encode(bytes(31)).decode()})


def test_a_secret_to_be_released_and_not_released_is_an_error_not_a_fallback() -> None:
    keys = GatewayKeys(released(audit={"enabled": True}), {}, released={})
    with pytest.raises(CustodyError, match="to be released by the key service"):
        keys.audit()
    given = GatewayKeys(released(audit={"enabled": True}), {}, released={"audit": KEYS["audit"]})
    assert given.audit().sign(b"x") == hmac.new(KEYS["audit"], b"x", hashlib.sha256).digest()
