"""Attested key release: the wire protocol between a gateway and `veil keys serve`, both sides'
cryptography, and nothing else (the service is gateway/keys/service.py, the gateway's side
gateway/keys/released.py).

    POST /v1/keys/challenge                         -> 200 {"nonce": <64 hex>, "ttl_s": <s>}
    POST /v1/keys/release
         {"nonce": <64 hex>, "keys": ["audit", ...],
          "certificate": <base64 DER: the gateway's TLS certificate>,
          "ephemeral_key": <base64: a fresh X25519 public key, 32 bytes>,
          "evidence": [<the sev-snp or tdx part, as `veil attest agent` serves it>]}
                                                    -> 200 {"keys": [...], "ephemeral_key":
                                                            <base64>, "iv": <base64>,
                                                            "ciphertext": <base64>}
                                                    -> 403 {"error": <why, briefly>}

The nonce is single use (consumed by the first release naming it, whatever the outcome) and
lapses after ttl_s. The evidence's report_data is

    SHA-512("veil-key-release-v1" || 0x00 || nonce (32 bytes)
            || SHA-256(SPKI of the gateway's TLS certificate) (32 bytes)
            || SHA-256(the gateway's ephemeral X25519 public key) (32 bytes))

under a label of its own, so neither a backend's evidence nor the gateway's evidence for its
clients can pass for it. The keys come back encrypted to the ephemeral key: the service makes an
ephemeral X25519 key of its own and also uses its long-term identity key (an X25519 key kept in
its sealed store; the gateway is configured with its public half, `key_release.service_key`):

    key = HKDF-SHA256(X25519(service ephemeral, gateway) || X25519(service identity, gateway),
                      salt = nonce, info = "veil-key-release-v1" || 0x00 || gateway public
                                           || service ephemeral public || identity public)
    ciphertext = AES-256-GCM(key, iv, JSON {name: base64 key}, AAD)
    AAD = "veil-key-release-v1" || 0x00 || nonce || the key names, sorted, joined by ","

so whoever sees the exchange (a TLS-terminating proxy included) learns no key; nobody but the
service can hand the gateway keys of its own choosing (which it would then know); and a reply
made for another exchange, or naming other keys, does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.errors import EvidenceError

LABEL = b"veil-key-release-v1\0"
CHALLENGE_PATH = "/v1/keys/challenge"
RELEASE_PATH = "/v1/keys/release"
KeyName = Literal["audit", "hash", "vault", "fhe"]  # the gateway's secrets, as `veil hsm` names
KEY_NAMES: tuple[str, ...] = get_args(KeyName)
IDENTITY = "service-identity"  # the service's X25519 identity key, in its sealed store
NONCE_BYTES = 32


def release_binding(nonce: bytes, certificate_key_sha256: bytes, ephemeral_public: bytes) -> bytes:
    """The 64 bytes of report_data (the module's docstring defines them)."""
    return hashlib.sha512(LABEL + nonce + certificate_key_sha256
                          + hashlib.sha256(ephemeral_public).digest()).digest()


def raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def aad(nonce: bytes, names: Iterable[str]) -> bytes:
    return LABEL + nonce + ",".join(sorted(names)).encode()


def _wrapping_key(shared: bytes, nonce: bytes, publics: bytes) -> bytes:
    """`shared`: both X25519 results, ephemeral first; `publics`: the gateway's, the service's
    ephemeral and its identity public keys, in that order."""
    return HKDF(hashes.SHA256(), 32, salt=nonce, info=LABEL + publics).derive(shared)


def seal_keys(gateway_public: bytes, nonce: bytes, keys: Mapping[str, bytes],
              identity: X25519PrivateKey) -> dict[str, Any]:
    """The service's reply: `keys` readable only by the holder of the gateway's private key,
    and made by the holder of the service's identity key (ValueError: not a usable key)."""
    own = X25519PrivateKey.generate()
    peer = X25519PublicKey.from_public_bytes(gateway_public)
    service_public = raw_public(own)
    key = _wrapping_key(own.exchange(peer) + identity.exchange(peer), nonce,
                        gateway_public + service_public + raw_public(identity))
    iv = os.urandom(12)
    plain = orjson.dumps({name: base64.b64encode(value).decode() for name, value in keys.items()})
    return {"keys": sorted(keys), "ephemeral_key": _b64(service_public), "iv": _b64(iv),
            "ciphertext": _b64(AESGCM(key).encrypt(iv, plain, aad(nonce, keys)))}


def open_keys(own: X25519PrivateKey, nonce: bytes, wanted: Iterable[str], reply: Any,
              identity_public: bytes) -> dict[str, bytes]:
    """The keys asked for, from the service's reply; EvidenceError for anything else (a reply
    for another exchange, other keys, a damaged one, or one not made by the service whose
    identity key is `identity_public`)."""
    names = sorted(wanted)
    if not isinstance(reply, dict) or reply.get("keys") != names:
        raise EvidenceError(f"the key service's reply does not carry the keys asked for "
                            f"({', '.join(names)})")
    service_public = decoded(reply.get("ephemeral_key"), "ephemeral_key", 32)
    iv = decoded(reply.get("iv"), "iv", 12)
    ciphertext = decoded(reply.get("ciphertext"), "ciphertext")
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(service_public)) + \
            own.exchange(X25519PublicKey.from_public_bytes(identity_public))
        key = _wrapping_key(shared, nonce, raw_public(own) + service_public + identity_public)
        plain = orjson.loads(AESGCM(key).decrypt(iv, ciphertext, aad(nonce, names)))
    except (InvalidTag, ValueError):  # orjson's decode error is a ValueError too
        raise EvidenceError("the key service's reply does not open with this exchange's key "
                            "and the service's identity (damaged, made for another exchange, "
                            "or by another service)") from None
    if not isinstance(plain, dict) or sorted(plain) != names:
        raise EvidenceError("the key service's reply holds other keys than it names")
    return {name: decoded(plain[name], name) for name in names}


def decoded(value: object, what: str, size: int | None = None) -> bytes:
    """Base64 text as bytes (of exactly `size`, when given); EvidenceError otherwise."""
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except binascii.Error:
        raw = None
    if raw is None or (size is not None and len(raw) != size):
        raise EvidenceError(f"{what}: not base64" + (f" of {size} bytes" if size else ""))
    return raw


def identity_public(private: bytes) -> str:
    """What a gateway's key_release.service_key says: the identity key's public half."""
    return _b64(raw_public(X25519PrivateKey.from_private_bytes(private)))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
