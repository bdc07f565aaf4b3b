"""Binding evidence to a fresh nonce and to the backend's TLS key.

The backend puts `binding(nonce, sha256(SPKI of its TLS certificate))` into the evidence's
report_data (or a token's nonce claim). The gateway reads the certificate off the TLS connection
itself, checks the binding, and then pins that certificate for every request to the backend: a
machine that did not produce the evidence cannot answer, and a replayed report carries another
nonce.

The gateway's own evidence, for its clients (self_evidence.py), binds one more thing, under a
label of its own so neither kind of evidence can pass for the other:

    report_data = SHA-512("veil-gateway-attestation-v1" || 0x00 || nonce (32 bytes)
                          || SHA-256(SPKI of the gateway's TLS certificate) (32 bytes)
                          || policy set digest (32 bytes))

where the policy set digest is SHA-256 of the JSON array of the policies in force, in order of
precedence, each [name, digest] (digest as "sha256:<hex>"), written compactly (no spaces,
ASCII-escaped): `policy_set_digest`. A client recomputes it from the list the gateway states.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

LABEL = b"veil-attestation-v1\0"
GATEWAY_LABEL = b"veil-gateway-attestation-v1\0"
GATEWAY_BINDING = GATEWAY_LABEL.rstrip(b"\0").decode()  # what the gateway's document names


def binding(nonce: bytes, spki_sha256: bytes) -> bytes:
    """64 bytes: exactly the size of an SNP/TDX report_data field."""
    return hashlib.sha512(LABEL + nonce + spki_sha256).digest()


def gateway_binding(nonce: bytes, spki_sha256: bytes, policy_set_digest: str) -> bytes:
    """The 64 bytes of the gateway's own report_data (the module's docstring defines them)."""
    policies = bytes.fromhex(policy_set_digest.removeprefix("sha256:"))
    if len(policies) != 32:
        raise ValueError("a policy set digest is sha256:<64 hex digits>")
    return hashlib.sha512(GATEWAY_LABEL + nonce + spki_sha256 + policies).digest()


def policy_set_digest(policies: Sequence[tuple[str, str]]) -> str:
    """Of (name, digest) pairs in order of precedence: the first that applies decides, so the
    order is part of what is in force."""
    listed = json.dumps([[name, digest] for name, digest in policies], separators=(",", ":"))
    return "sha256:" + hashlib.sha256(listed.encode()).hexdigest()


def spki_sha256(certificate_der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(certificate_der)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()
