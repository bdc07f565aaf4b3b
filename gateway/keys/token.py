"""The PKCS#11 token (`hsm:` in the config): one logged-in session, the keys it holds, and the
three operations the gateway asks of them. The keys are made in the token sensitive and
non-extractable, so no key material ever crosses this module: only MACs, ciphertexts and
plaintexts do.

Each secret is a label; each version of it is one object with that label and `CKA_ID` its
number ("1", "2", ...). The newest version is current; older ones stay for what was made under
them (audit records to verify, sealed CKKS keys to open).

    hmac   generic secret, CKM_SHA256_HMAC   the audit key, the hash key, the vault key
    aes    AES-256, CKM_AES_GCM              the FHE master key (seals the CKKS secret key)

A call that fails (the token removed, the session lost) reopens the session once and retries;
failing again it raises `KeyUnavailable`, which refuses the request that needed it. Nothing
here falls back to another key. The session is shared by the event loop and any thread, so
calls are serialized by a lock (a PKCS#11 session runs one operation at a time).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, SecretKey, Session
from pkcs11.exceptions import (
    EncryptedDataInvalid,
    EncryptedDataLenRange,
    GeneralError,
    NoSuchKey,
    NoSuchToken,
    PinIncorrect,
    PinLenRange,
    PKCS11Error,
    UserAlreadyLoggedIn,
)
from pkcs11.mechanisms import GCMParams

from gateway.errors import KeyUnavailable, TokenError
from gateway.settings import HsmSettings

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Library

Kind = Literal["hmac", "aes"]
T = TypeVar("T")
# What each kind of key may do: nothing else (no wrap, no derive, no export).
USES: dict[Kind, dict[Attribute, bool]] = {
    "hmac": {Attribute.SIGN: True, Attribute.VERIFY: True, Attribute.ENCRYPT: False,
             Attribute.DECRYPT: False},
    "aes": {Attribute.SIGN: False, Attribute.VERIFY: False, Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True},
}
LOCKED = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.TOKEN: True,
          Attribute.PRIVATE: True, Attribute.WRAP: False, Attribute.UNWRAP: False,
          Attribute.DERIVE: False}


@dataclass(frozen=True)
class KeyVersion:
    label: str
    version: int
    kind: Kind
    sensitive: bool
    extractable: bool

    @property
    def key_id(self) -> str:
        """How records name the key that made them (`veil-audit.v2`): a name, not material."""
        return f"{self.label}.v{self.version}"


def library(module: str) -> Library:
    """The module, loaded once per process (python-pkcs11 keeps it: C_Initialize may run
    once)."""
    try:
        return pkcs11.lib(module)
    except PKCS11Error as exc:
        raise TokenError(f"{module} does not load as a PKCS#11 library: {exc}",
                         "module") from None


class Token:
    def __init__(self, settings: HsmSettings, pin: str) -> None:
        self._settings = settings
        self._pin = pin
        self._lock = threading.Lock()
        # Handles found, by (label, version); Any: python-pkcs11 adds sign/encrypt at run time.
        self._keys: dict[tuple[str, int], Any] = {}
        self._session: Session | None = self._login()

    @classmethod
    def open(cls, settings: HsmSettings, environ: Mapping[str, str]) -> Token:
        pin = environ.get(settings.pin_env, "")
        if not pin:
            raise TokenError(f"environment variable {settings.pin_env} is not set or empty",
                             "pin_env")
        return cls(settings, pin)

    @property
    def name(self) -> str:
        s = self._settings
        return f"token {s.token_label!r}" if s.token_label is not None else f"slot {s.slot}"

    @property
    def _by(self) -> str:
        return "token_label" if self._settings.token_label is not None else "slot"

    def _login(self) -> Session:
        lib = library(self._settings.module)
        try:
            if self._settings.token_label is not None:
                token = lib.get_token(token_label=self._settings.token_label)
            else:
                token = next(slot.get_token() for slot in lib.get_slots(token_present=True)
                             if slot.slot_id == self._settings.slot)
        except (NoSuchToken, StopIteration):
            raise TokenError(f"no PKCS#11 {self.name} in {self._settings.module}",
                             self._by) from None
        except PKCS11Error as exc:
            raise TokenError(f"the PKCS#11 {self.name} cannot be listed: {exc!r}",
                             self._by) from None
        try:
            session: Session = token.open(user_pin=self._pin, rw=True)
        except UserAlreadyLoggedIn:  # PKCS#11 logs in an application, not a session: another
            session = token.open(rw=True)  # of this process's sessions did, with this PIN
        except (PinIncorrect, PinLenRange):
            raise TokenError(f"the PIN in {self._settings.pin_env} is wrong for the PKCS#11 "
                             f"{self.name}", "pin_env") from None
        except PKCS11Error as exc:
            raise TokenError(f"cannot log in to the PKCS#11 {self.name}: {exc!r}",
                             "pin_env") from None
        return session

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                with contextlib.suppress(PKCS11Error):  # a token already gone: nothing to close
                    self._session.close()
                self._session = None
            self._keys.clear()

    def _call(self, what: str, operation: Callable[[Session], T]) -> T:
        """`operation` on the session; reopened once if it fails (a token re-inserted, a
        session the device dropped), `KeyUnavailable` if it fails again."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._session is None:
                        self._session = self._login()
                    return operation(self._session)
                except (PKCS11Error, TokenError) as exc:
                    self._session, error = None, exc
                    self._keys.clear()
                    if attempt == 2:
                        break
            raise KeyUnavailable(f"The HSM could not {what} ({self.name}: "
                                 f"{type(error).__name__}); the request was refused.")

    def _key(self, session: Session, label: str, version: int) -> Any:
        cached = self._keys.get((label, version))
        if cached is None:
            found = session.get_key(object_class=ObjectClass.SECRET_KEY, label=label,
                                    id=str(version).encode())
            if not isinstance(found, SecretKey):
                raise NoSuchKey(label)
            cached = self._keys[(label, version)] = found
        return cached

    def versions(self, label: str) -> list[KeyVersion]:
        """Every version of `label`, oldest first (none: an empty list)."""
        def listed(session: Session) -> list[KeyVersion]:
            found = []
            for key in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                            Attribute.LABEL: label}):
                raw_id = bytes(key[Attribute.ID])
                if not raw_id.isdigit():
                    continue  # not one of ours: another application's object
                kind: Kind = "aes" if key[Attribute.KEY_TYPE] == KeyType.AES else "hmac"
                found.append(KeyVersion(label, int(raw_id), kind, bool(key[Attribute.SENSITIVE]),
                                        bool(key[Attribute.EXTRACTABLE])))
            return sorted(found, key=lambda k: k.version)
        return self._call("list its keys", listed)

    def current(self, label: str) -> KeyVersion:
        """The newest version, or `TokenError` (a configured key the token lacks)."""
        versions = self.versions(label)
        if not versions:
            raise TokenError(f"no key labelled {label!r} in the PKCS#11 {self.name}: run "
                             "`veil hsm init`")
        return versions[-1]

    def create(self, label: str, kind: Kind) -> KeyVersion:
        """A new version of `label`, made in the token (sensitive, never extractable)."""
        existing = self.versions(label)
        if existing and existing[-1].kind != kind:
            raise TokenError(f"{label!r} in the {self.name} is an {existing[-1].kind} key, not "
                             f"{kind}")
        version = existing[-1].version + 1 if existing else 1

        def made(session: Session) -> KeyVersion:
            key_type = KeyType.AES if kind == "aes" else KeyType.GENERIC_SECRET
            key = session.generate_key(key_type, 256, label=label, id=str(version).encode(),
                                       store=True, template={**LOCKED, **USES[kind]})
            return KeyVersion(label, version, kind, bool(key[Attribute.SENSITIVE]),
                              bool(key[Attribute.EXTRACTABLE]))
        return self._call("create a key", made)

    def hmac(self, label: str, version: int, data: bytes) -> bytes:
        """HMAC-SHA256 of `data` under that key, computed by the token."""
        return self._call("compute an HMAC", lambda session: bytes(
            self._key(session, label, version).sign(data, mechanism=Mechanism.SHA256_HMAC)))

    def encrypt(self, label: str, version: int, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        """AES-GCM in the token: ciphertext || 16-byte tag, as `cryptography`'s AESGCM."""
        return self._call("encrypt", lambda session: bytes(
            self._key(session, label, version).encrypt(
                data, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad, 128))))

    def decrypt(self, label: str, version: int, nonce: bytes, data: bytes,
                aad: bytes) -> bytes | None:
        """The plaintext, or None if the tag does not verify under that key. SoftHSM2 (like
        several vendors) reports a wrong tag as CKR_GENERAL_ERROR."""
        def opened(session: Session) -> bytes | None:
            key = self._key(session, label, version)
            try:
                return bytes(key.decrypt(data, mechanism=Mechanism.AES_GCM,
                                         mechanism_param=GCMParams(nonce, aad, 128)))
            except (EncryptedDataInvalid, EncryptedDataLenRange, GeneralError):
                return None
        return self._call("decrypt", opened)
