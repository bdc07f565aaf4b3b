"""Where each of the gateway's secrets comes from, as the config says: an environment variable
or a file (bytes in memory), the PKCS#11 token (`hsm:` and a `*_hsm_label`, the key staying
in the token), or a key service that released it to this gateway after verifying its evidence
(`key_release.keys`, gateway/keys/released.py: bytes in memory only). One place decides, and
nothing changes where the keys are used.

    secret      setting(s)                              in the token
    audit       audit.key_env | key_file | key_hsm_label        every record's MAC
    hash        privacy.hash_key_env | hash_key_hsm_label        per-tenant data keys
    vault       state.vault_key_env | vault_key_hsm_label        the vault's root data key
    fhe master  fhe.master_key_env | master_key_file | ..._hsm_label  AES-GCM of the CKKS key
    any of them key_release.keys: [audit, hash, vault, fhe]  (released: in memory)

The audit and FHE master keys in memory come from this process's environment, as they always
have; the others, and the HSM's PIN, from the environment the gateway is built with.

Every failure is fail-closed: a `TokenError` (or `CustodyError`) at start, never a fallback.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.errors import CustodyError, TokenError
from gateway.fhe.keys import read_master_key
from gateway.keys.material import (
    Deriver,
    MemoryDeriver,
    MemorySigner,
    Sealer,
    Signer,
    TokenDeriver,
    TokenSealer,
    TokenSigner,
)
from gateway.keys.release import KeyName
from gateway.keys.token import Kind, Token
from gateway.observability.audit import load_key
from gateway.settings import Settings
from gateway.yamlsource import KeyPath

VAULT_ROOT = b"veil vault v1"  # the label the vault's root data key is derived under
# What kind of key each secret is in the token.
KINDS: dict[KeyPath, Kind] = {("audit", "key_hsm_label"): "hmac",
                              ("privacy", "hash_key_hsm_label"): "hmac",
                              ("fhe", "master_key_hsm_label"): "aes",
                              ("state", "vault_key_hsm_label"): "hmac"}


class GatewayKeys:
    """One process's secrets. The token is opened on first need (in the process that uses
    it: a PKCS#11 session does not survive a fork) and closed with the gateway."""

    def __init__(self, settings: Settings, environ: Mapping[str, str],
                 released: Mapping[str, bytes] | None = None) -> None:
        """`released`: the keys a key service released to this gateway (key_release)."""
        self._settings = settings
        self._environ = environ
        self._token: Token | None = None
        self._released = released or {}

    def _release(self, secret: KeyName) -> bytes | None:
        """The released key, when the config says this secret is released (and then it must
        have been: never a fallback to another source)."""
        if not self._settings.released(secret):
            return None
        key = self._released.get(secret)
        if key is None:
            raise CustodyError(f"the {secret} key is to be released by the key service "
                               "(key_release), and was not")
        return key

    def token(self) -> Token:
        if self._token is None:
            if self._settings.hsm is None:
                raise TokenError("no hsm section in the config")
            self._token = Token.open(self._settings.hsm, self._environ)
        return self._token

    def close(self) -> None:
        if self._token is not None:
            self._token.close()
            self._token = None

    def audit(self) -> Signer:
        audit = self._settings.audit
        released = self._release("audit")
        if released is not None:
            return MemorySigner(released)
        if audit.key_hsm_label:
            return TokenSigner(self.token(), audit.key_hsm_label)
        return MemorySigner(load_key(audit.key_file, audit.key_env))  # the process's own env

    def hash_key(self) -> Deriver | None:
        privacy = self._settings.privacy
        released = self._release("hash")
        if released is not None:
            return MemoryDeriver(released)
        if privacy.hash_key_hsm_label:
            return TokenDeriver(self.token(), privacy.hash_key_hsm_label)
        if privacy.hash_key_env:
            return MemoryDeriver(self._environ[privacy.hash_key_env].encode())
        return None

    def vault_secret(self) -> bytes | None:
        """The secret the vault's own keys are derived from (HKDF, one info string each):
        the variable's value, or a data key the token derives, held in memory only."""
        state = self._settings.state
        released = self._release("vault")
        if released is not None:
            return released
        if state.vault_key_hsm_label:
            return TokenDeriver(self.token(), state.vault_key_hsm_label).derive(VAULT_ROOT)
        if state.vault_key_env:
            return self._environ[state.vault_key_env].encode()
        return None

    def fhe_master(self) -> bytes | Sealer:
        """The master key's bytes, or the token sealing with it (keys_in: dir only)."""
        fhe = self._settings.fhe
        released = self._release("fhe")
        if released is not None:
            return released
        if fhe.master_key_hsm_label:
            return TokenSealer(self.token(), fhe.master_key_hsm_label)
        return read_master_key(fhe.master_key_env, fhe.master_key_file)  # likewise

    def labels(self) -> dict[KeyPath, str]:
        """The token's keys this config names (for `veil hsm`)."""
        return {where: label for where, label in self._settings.hsm_labels().items() if label}
