"""Custody of the CKKS secret key: it exists only in the gateway, and at rest only sealed with
AES-GCM under a master key from an environment variable or a file (32 bytes, hex or raw).

    <dir>/<key id>.key   nonce (12 bytes) || AES-GCM(secret key), the key id as associated data
    <dir>/current        the key id in use

`veil keys init` makes the first key, `veil keys rotate` a new one (older keys stay, sealed, so
replies to queries sent under them can still be read until they are deleted), `veil keys show`
prints ids and dates, never key material. The scorer receives, per key id, only evaluation keys
(Galois keys for exactly the rotations its models use): never the secret key.
"""

from __future__ import annotations

import datetime
import functools
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import tenseal.sealapi as seal
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import CustodyError
from gateway.fhe.seal import galois_element, load, new_context, to_bytes


@dataclass
class FheKeys:
    """One key epoch in memory: the secret key and what is derived from it."""

    key_id: str
    context: seal.SEALContext
    secret: seal.SecretKey
    _galois: dict[tuple[int, ...], bytes] = field(default_factory=dict)

    # Built once per epoch, not per query (the encoder alone costs ~0.4 ms to set up).
    @functools.cached_property
    def _encoder(self) -> seal.CKKSEncoder:
        return seal.CKKSEncoder(self.context)

    @functools.cached_property
    def _encryptor(self) -> seal.Encryptor:
        return seal.Encryptor(self.context, self.secret)

    @functools.cached_property
    def _decryptor(self) -> seal.Decryptor:
        return seal.Decryptor(self.context, self.secret)

    def encoder(self) -> seal.CKKSEncoder:
        return self._encoder

    def encryptor(self) -> seal.Encryptor:
        return self._encryptor

    def decryptor(self) -> seal.Decryptor:
        return self._decryptor

    def galois_keys(self, steps: list[int]) -> bytes:
        """Serialized evaluation keys for exactly these rotations (what the scorer gets)."""
        wanted = tuple(sorted(set(steps)))
        if wanted not in self._galois:
            generator = seal.KeyGenerator(self.context, self.secret)
            self._galois[wanted] = to_bytes(generator.create_galois_keys(
                [galois_element(step) for step in wanted]))
        return self._galois[wanted]


class KeyStore:
    def __init__(self, directory: Path, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise CustodyError("the FHE master key must be 32 bytes (64 hex digits)")
        self._dir = directory
        self._aead = AESGCM(master_key)

    @classmethod
    def open(cls, directory: str, key_env: str | None, key_file: str | None,
             environ: dict[str, str] | os._Environ[str] | None = None) -> KeyStore:
        env = os.environ if environ is None else environ
        if key_env:
            raw = env.get(key_env, "").encode()
        elif key_file:
            try:
                raw = Path(key_file).read_bytes().strip()
            except OSError as exc:
                raise CustodyError(f"cannot read the FHE master key {key_file}: "
                                   f"{exc.strerror} (`make run` creates one under var/)"
                                   ) from None
        else:
            raise CustodyError("fhe.master_key_env or fhe.master_key_file is required")
        try:
            master = bytes.fromhex(raw.decode()) if len(raw) == 64 else raw
        except ValueError:
            raise CustodyError("the FHE master key is not 64 hex digits") from None
        return cls(Path(directory), master)

    def init(self) -> str:
        if self.current_id() is not None:
            raise CustodyError(f"keys already exist in {self._dir} (use rotate)")
        return self.rotate()

    def rotate(self) -> str:
        self._dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        key_id = f"fhe-{stamp}-{secrets.token_hex(4)}"
        secret = seal.KeyGenerator(new_context()).secret_key()
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._aead.encrypt(nonce, to_bytes(secret), key_id.encode())
        path = self._dir / f"{key_id}.key"
        path.write_bytes(sealed)
        path.chmod(0o600)
        temporary = self._dir / "current.tmp"
        temporary.write_text(key_id + "\n")
        temporary.replace(self._dir / "current")
        return key_id

    def current_id(self) -> str | None:
        pointer = self._dir / "current"
        return pointer.read_text().strip() if pointer.is_file() else None

    def load(self, key_id: str | None = None) -> FheKeys:
        key_id = key_id or self.current_id()
        if key_id is None:
            raise CustodyError(f"no FHE key in {self._dir}: run `veil keys init`")
        try:
            sealed = (self._dir / f"{key_id}.key").read_bytes()
            plain = self._aead.decrypt(sealed[:12], sealed[12:], key_id.encode())
        except FileNotFoundError:
            raise CustodyError(f"no FHE key {key_id} in {self._dir}") from None
        except InvalidTag:
            raise CustodyError(f"FHE key {key_id} does not open with this master key (or was "
                            "tampered with)") from None
        context = new_context()
        secret = seal.SecretKey()
        load(secret, context, plain)
        return FheKeys(key_id, context, secret)

    def show(self) -> list[dict[str, str]]:
        current = self.current_id()
        return [{"key_id": path.stem, "current": str(path.stem == current).lower(),
                 "created": path.stem.split("-")[1] if path.stem.count("-") >= 2 else ""}
                for path in sorted(self._dir.glob("fhe-*.key"))]
