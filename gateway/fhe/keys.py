"""Custody of the CKKS secret key: it exists only in the gateway, and at rest only sealed with
AES-GCM under a master key from an environment variable or a file (32 bytes, hex or raw).

    <dir>/<key id>.key   nonce (12 bytes) || AES-GCM(secret key), the key id as associated data
    <dir>/current        the key id in use

With `fhe.master_key_hsm_label` the master key is an AES key in the PKCS#11 token and the
token does the sealing and unsealing (gateway/keys/material.py `TokenSealer`): the same bytes on
disk, the master key never in memory. Only the unsealed CKKS key is, as it must be to decrypt.

With `fhe.keys_in: redis` the same sealed bytes live in the shared store instead, for every
replica (gateway/fhe/shared_keys.py). Key ids are `fhe-<UTC second>-<8 hex>`: they sort in the
order they were made, which is how a replica tells a newer epoch from a replayed older one.

`veil keys init` makes the first key, `veil keys rotate` a new one (older keys stay, sealed, so
replies to queries sent under them can still be read until they are deleted), `veil keys show`
prints ids and dates, never key material. The scorer receives, per key id, only evaluation keys
(Galois keys for exactly the rotations its models use): never the secret key.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tenseal.sealapi as seal
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import CustodyError
from gateway.fhe.seal import galois_element, load, new_context, to_bytes
from gateway.keys.material import Sealer


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


KEY_ID = re.compile(r"^fhe-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
STAMP = "%Y%m%dT%H%M%SZ"


def read_master_key(key_env: str | None, key_file: str | None,
                    environ: Mapping[str, str] | None = None) -> bytes:
    """The 32-byte master key from the environment variable or the file (hex or raw)."""
    env = os.environ if environ is None else environ
    if key_env:
        raw = env.get(key_env, "").encode()
    elif key_file:
        try:
            raw = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise CustodyError(f"cannot read the FHE master key {key_file}: "
                               f"{exc.strerror} (`make run` creates one under var/)") from None
    else:
        raise CustodyError("fhe.master_key_env or fhe.master_key_file is required")
    try:
        master = bytes.fromhex(raw.decode()) if len(raw) == 64 else raw
    except ValueError:
        raise CustodyError("the FHE master key is not 64 hex digits") from None
    if len(master) != 32:
        raise CustodyError("the FHE master key must be 32 bytes (64 hex digits)")
    return master


def new_key_id(after: str | None = None) -> str:
    """A fresh key id, stamped now, or one second after `after` if that is not earlier: an
    operator rotating on a host whose clock is behind must still make the newest epoch (the
    replicas would take an older-looking id for a replay and ignore it)."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    if after is not None and KEY_ID.match(after):
        previous = datetime.datetime.strptime(after.split("-")[1], STAMP).replace(
            tzinfo=datetime.UTC)
        now = max(now, previous + datetime.timedelta(seconds=1))
    return f"fhe-{now.strftime(STAMP)}-{secrets.token_hex(4)}"


def new_sealed_secret(aead: Sealer, key_id: str) -> bytes:
    """A new CKKS secret key, sealed: nonce || AES-GCM(secret), the key id as associated data
    (so a sealed key moved under another id does not open)."""
    secret = seal.KeyGenerator(new_context()).secret_key()
    nonce = secrets.token_bytes(12)
    return nonce + aead.encrypt(nonce, to_bytes(secret), key_id.encode())


def unseal(aead: Sealer, key_id: str, sealed: bytes) -> bytes:
    """The serialized secret key, or `CustodyError` if it does not open under this key id."""
    try:
        return aead.decrypt(sealed[:12], sealed[12:], key_id.encode())
    except (InvalidTag, ValueError):
        raise CustodyError(f"FHE key {key_id} does not open with this master key (or was "
                           "tampered with)") from None


def open_sealed(aead: Sealer, key_id: str, sealed: bytes) -> FheKeys:
    """One epoch in memory from its sealed bytes (SEAL validates the key against the
    context)."""
    plain = unseal(aead, key_id, sealed)
    context = new_context()
    secret = seal.SecretKey()
    load(secret, context, plain)
    return FheKeys(key_id, context, secret)


class KeyStore:
    """Epochs in a directory: one replica's own, or imported into Redis by `veil keys init`."""

    def __init__(self, directory: Path, master_key: bytes | Sealer) -> None:
        """`master_key`: its bytes, or what seals with it where it is kept (the token)."""
        if isinstance(master_key, bytes) and len(master_key) != 32:
            raise CustodyError("the FHE master key must be 32 bytes (64 hex digits)")
        self._dir = directory
        self._master = master_key
        self._aead: Sealer = AESGCM(master_key) if isinstance(master_key, bytes) else master_key

    @classmethod
    def open(cls, directory: str, key_env: str | None, key_file: str | None,
             environ: Mapping[str, str] | None = None) -> KeyStore:
        return cls(Path(directory), read_master_key(key_env, key_file, environ))

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def master_key(self) -> bytes:
        """For the shared store, which seals under the same key (`veil keys init` imports)."""
        if not isinstance(self._master, bytes):
            raise CustodyError("the FHE master key is in the HSM: keys_in: redis needs one in "
                               "memory")
        return self._master

    def init(self) -> str:
        if self.current_id() is not None:
            raise CustodyError(f"keys already exist in {self._dir} (use rotate)")
        return self.rotate()

    def rotate(self) -> str:
        self._dir.mkdir(parents=True, exist_ok=True)
        key_id = new_key_id(after=self.current_id())
        path = self._dir / f"{key_id}.key"
        path.write_bytes(new_sealed_secret(self._aead, key_id))
        path.chmod(0o600)
        temporary = self._dir / "current.tmp"
        temporary.write_text(key_id + "\n")
        temporary.replace(self._dir / "current")
        return key_id

    def current_id(self) -> str | None:
        pointer = self._dir / "current"
        return pointer.read_text().strip() if pointer.is_file() else None

    def ids(self) -> list[str]:
        """Every epoch kept here, oldest first."""
        return sorted(path.stem for path in self._dir.glob("fhe-*.key"))

    def sealed(self, key_id: str) -> bytes:
        """The sealed bytes as kept (for an import), after checking that they open."""
        try:
            sealed = (self._dir / f"{key_id}.key").read_bytes()
        except FileNotFoundError:
            raise CustodyError(f"no FHE key {key_id} in {self._dir}") from None
        unseal(self._aead, key_id, sealed)
        return sealed

    def load(self, key_id: str | None = None) -> FheKeys:
        key_id = key_id or self.current_id()
        if key_id is None:
            raise CustodyError(f"no FHE key in {self._dir}: run `veil keys init`")
        try:
            sealed = (self._dir / f"{key_id}.key").read_bytes()
        except FileNotFoundError:
            raise CustodyError(f"no FHE key {key_id} in {self._dir}") from None
        return open_sealed(self._aead, key_id, sealed)

    def show(self) -> list[dict[str, str]]:
        current = self.current_id()
        return [{"key_id": key_id, "current": str(key_id == current).lower(),
                 "created": key_id.split("-")[1] if key_id.count("-") >= 2 else ""}
                for key_id in self.ids()]
