"""What the gateway asks of each secret, whoever holds it. Three shapes, each with one
implementation over bytes in memory (a file or environment key, or one a key service
released) and one over the PKCS#11 token, where the key itself stays:

    Signer    the audit key: HMAC-SHA256 of every record, under a named version
    Deriver   the hash and vault keys: HMAC-SHA256(key, label) as a data key for one tenant or
              purpose, held in memory (a token round trip per hashed value would cost ~60 us)
    Sealer    the FHE master key: AES-GCM over the CKKS secret key (`cryptography`'s AESGCM
              is one, for a key in memory)
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from typing import Protocol

from cryptography.exceptions import InvalidTag

from gateway.keys.token import Token


class Signer(Protocol):
    @property
    def key_id(self) -> str | None:
        """The version MACs are made under now (None: a key in memory, which has one)."""

    def sign(self, data: bytes, key_id: str | None = None) -> bytes:
        """HMAC-SHA256 under `key_id` (None: the current one); `LookupError` if unknown."""


class Deriver(Protocol):
    def derive(self, label: bytes) -> bytes:
        """HMAC-SHA256(key, label): 32 bytes, the same for the same label and key."""


class Sealer(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """The plaintext; `InvalidTag` if it does not open under any version."""


class MemorySigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    @property
    def key_id(self) -> str | None:
        return None

    def sign(self, data: bytes, key_id: str | None = None) -> bytes:
        if key_id is not None:
            raise LookupError(f"made under the HSM key {key_id}, not this key")
        return hmac.new(self._key, data, hashlib.sha256).digest()


class MemoryDeriver:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def derive(self, label: bytes) -> bytes:
        return hmac.new(self._key, label, hashlib.sha256).digest()


class TokenSigner:
    """MACs made by the token, one call per record: the audit key never enters memory."""

    def __init__(self, token: Token, label: str) -> None:
        self._token = token
        self._label = label
        self._current = token.current(label)
        self._versions: set[int] = set()  # older versions seen in the token (verifying)

    @property
    def key_id(self) -> str:
        return self._current.key_id

    def sign(self, data: bytes, key_id: str | None = None) -> bytes:
        version = self._current.version if key_id in (None, self.key_id) \
            else self._version(key_id)
        return self._token.hmac(self._label, version, data)

    def _version(self, key_id: str) -> int:
        label, _, number = key_id.rpartition(".v")
        if label != self._label or not number.isdigit():
            raise LookupError(f"made under {key_id}, not a version of {self._label}")
        if int(number) not in self._versions:
            self._versions = {k.version for k in self._token.versions(self._label)}
            if int(number) not in self._versions:
                raise LookupError(f"made under {key_id}, which the {self._token.name} lacks")
        return int(number)


class TokenDeriver:
    """Data keys derived by the token's current version, each once per process (per tenant,
    per purpose): after the first, hashing costs what it costs with a key in memory."""

    def __init__(self, token: Token, label: str) -> None:
        self._token = token
        self._label = label
        self._version = token.current(label).version
        self._derived: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def derive(self, label: bytes) -> bytes:
        with self._lock:
            if label not in self._derived:
                self._derived[label] = self._token.hmac(self._label, self._version, label)
            return self._derived[label]


class TokenSealer:
    """AES-GCM in the token: new seals under the current version; opening tries every
    version, newest first (GCM's tag says which one sealed it), so CKKS keys sealed before a
    rotation of the master key still open."""

    def __init__(self, token: Token, label: str) -> None:
        self._token = token
        self._label = label
        self._version = token.current(label).version

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        return self._token.encrypt(self._label, self._version, nonce, data,
                                   associated_data or b"")

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        for version in sorted((k.version for k in self._token.versions(self._label)),
                              reverse=True):
            plain = self._token.decrypt(self._label, version, nonce, data,
                                        associated_data or b"")
            if plain is not None:
                return plain
        raise InvalidTag
