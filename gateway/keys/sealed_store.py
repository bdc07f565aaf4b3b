"""The key service's store: the gateway secrets it may release, sealed at rest under the
operator's master key (an AES key in the PKCS#11 token, or 32 bytes from a file or variable),
so a copy of the file is no copy of the keys.

    {"version": 1, "keys": {"<name>": {"iv": <base64>, "sealed": <base64>}}}

Each key is AES-256-GCM with AAD "veil-key-store-v1" || 0x00 || its name: a sealed key moved
under another name does not open. The file is replaced atomically and kept 0600.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag

from gateway.errors import CustodyError, EvidenceError
from gateway.keys.material import Sealer
from gateway.keys.release import decoded

STORE_LABEL = b"veil-key-store-v1\0"
KEY_BYTES = 32


class SealedStore:
    def __init__(self, path: Path, sealer: Sealer) -> None:
        self._path = path
        self._sealer = sealer

    def names(self) -> list[str]:
        return sorted(self._read())

    def open(self, names: Iterable[str]) -> dict[str, bytes]:
        """The keys in memory; CustodyError naming one that is missing or does not open."""
        entries = self._read()
        opened = {}
        for name in names:
            entry = entries.get(name)
            if not isinstance(entry, dict):
                raise CustodyError(f"the key store {self._path} holds no {name!r} key (run "
                                   "`veil keys seal`)")
            try:
                opened[name] = self._sealer.decrypt(
                    decoded(entry.get("iv"), "iv", 12), decoded(entry.get("sealed"), "sealed"),
                    STORE_LABEL + name.encode())
            except (InvalidTag, EvidenceError):
                raise CustodyError(f"the {name!r} key in {self._path} does not open under the "
                                   "store's master key") from None
        return opened

    def seal_missing(self, names: Iterable[str]) -> list[str]:
        """Generate each named key the store lacks (never replaces one); the names added."""
        entries = self._read()
        added = [name for name in names if name not in entries]
        for name in added:
            iv = os.urandom(12)
            sealed = self._sealer.encrypt(iv, os.urandom(KEY_BYTES), STORE_LABEL + name.encode())
            entries[name] = {"iv": base64.b64encode(iv).decode(),
                             "sealed": base64.b64encode(sealed).decode()}
        if added:
            self._write(entries)
        return added

    def _read(self) -> dict[str, object]:
        if not self._path.exists():
            return {}
        try:
            document = orjson.loads(self._path.read_bytes())
        except orjson.JSONDecodeError:
            raise CustodyError(f"the key store {self._path} is not JSON") from None
        if not isinstance(document, dict) or document.get("version") != 1 \
                or not isinstance(document.get("keys"), dict):
            raise CustodyError(f"the key store {self._path} is not a version 1 key store")
        return dict(document["keys"])

    def _write(self, entries: dict[str, object]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        partial = self._path.with_name(self._path.name + ".partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(orjson.dumps({"version": 1, "keys": entries}, option=orjson.OPT_INDENT_2))
        partial.replace(self._path)
