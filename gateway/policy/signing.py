"""Detached Ed25519 signatures for policy files (`policy.yaml` -> `policy.yaml.sig`).

The signature covers the file's exact bytes. A policy is verified together with every base it
extends, so a signed policy cannot be weakened by editing an unsigned base.
"""

from __future__ import annotations

import base64
import errno
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.errors import SignatureError

SUFFIX = ".sig"


def generate(private_path: Path, public_path: Path) -> None:
    """Never over an existing file (FileExistsError): a key pair replaced by mistake unsigns
    every policy. The private key is created readable by its owner only, never wider for a
    moment."""
    key = Ed25519PrivateKey.generate()
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(errno.EEXIST, "already exists (not overwritten)", str(path))
    with os.fdopen(os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                   "wb") as private:
        private.write(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    with public_path.open("xb") as public:
        public.write(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key")
    return key


def sign(policy: Path, private_key: Path) -> Path:
    signature = signature_path(policy)
    signature.write_text(signature_text(policy.read_bytes(), private_key))
    return signature


def signature_path(policy: Path) -> Path:
    return policy.with_name(policy.name + SUFFIX)


def signature_text(data: bytes, private_key: Path) -> str:
    """What the `.sig` beside a file of exactly `data` holds: so bytes not yet written (the
    studio's save) can be signed, and the signature checked, before anything is replaced."""
    key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{private_key}: not an Ed25519 private key")
    return base64.b64encode(key.sign(data)).decode() + "\n"


def verify_file(policy: Path, public_key: Ed25519PublicKey) -> None:
    path = signature_path(policy)
    if not path.exists():
        raise SignatureError(f"{policy}: unsigned (no {path.name})")
    verify_text(policy.read_bytes(), path.read_text(), public_key, str(policy))


def verify_text(data: bytes, signature: str, public_key: Ed25519PublicKey, name: str) -> None:
    try:
        public_key.verify(base64.b64decode(signature.strip(), validate=True), data)
    except (ValueError, InvalidSignature):
        raise SignatureError(f"{name}: signature does not verify (file or signature changed, "
                             "or signed with another key)") from None


def verify_chain(files: tuple[str, ...], public_key: Ed25519PublicKey) -> None:
    for file in files:
        verify_file(Path(file), public_key)
