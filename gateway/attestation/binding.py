"""Binding evidence to a fresh nonce and to the backend's TLS key.

The backend puts `binding(nonce, sha256(SPKI of its TLS certificate))` into the evidence's
report_data (or a token's nonce claim). The gateway reads the certificate off the TLS connection
itself, checks the binding, and then pins that certificate for every request to the backend: a
machine that did not produce the evidence cannot answer, and a replayed report carries another
nonce.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

LABEL = b"veil-attestation-v1\0"


def binding(nonce: bytes, spki_sha256: bytes) -> bytes:
    """64 bytes: exactly the size of an SNP/TDX report_data field."""
    return hashlib.sha512(LABEL + nonce + spki_sha256).digest()


def spki_sha256(certificate_der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(certificate_der)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()
