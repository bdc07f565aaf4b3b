"""`veil keys serve --config keys-service.yaml`: what the key service is configured with.

    listen: {host: 0.0.0.0, port: 8445, tls_cert_file: ks.crt, tls_key_file: ks.key}
    policy: gateway-trust.yaml      # a policy file; its trust_levels[level] judges gateways
    level: confidential-cpu
    keys: [audit, hash, vault, fhe] # what it holds and releases (default: all four)
    store:
      path: keys.json               # the keys, sealed (gateway/keys/sealed_store.py)
      master_key_hsm_label: ks-master   # an AES key in the `hsm` token (or master_key_env /
                                        # master_key_file: 32 bytes, 64 hex digits)
    hsm: {module: ..., token_label: ..., pin_env: ...}
    attestation: {...}              # roots, AMD KDS / Intel PCS, cache: as the gateway's
    challenge_ttl_s: 30

Relative paths are relative to the file's folder. TLS is required: the service is meant for a
trust domain of its own, reached across a network. Beside the keys it releases, the store holds
the service's own identity key (X25519): `veil keys seal` prints its public half, which every
gateway names as `key_release.service_key`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

from pydantic import Field, model_validator

from gateway.errors import ConfigError, ConfigIssue, ConfigProblems
from gateway.keys.release import KeyName
from gateway.settings import (
    AttestationSettings,
    HsmLabel,
    HsmSettings,
    LoggingSettings,
    Strict,
    one_source,
)
from gateway.yamlsource import load_yaml, validate


class ServiceListen(Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8445
    tls_cert_file: str
    tls_key_file: str


class StoreSettings(Strict):
    path: str = "keys.json"
    master_key_env: str | None = None
    master_key_file: str | None = None
    master_key_hsm_label: HsmLabel | None = None

    @model_validator(mode="after")
    def _one_master_key(self) -> StoreSettings:
        problems = one_source((("master_key_env",), self.master_key_env),
                              (("master_key_file",), self.master_key_file),
                              (("master_key_hsm_label",), self.master_key_hsm_label))
        if not (self.master_key_env or self.master_key_file or self.master_key_hsm_label):
            problems.append((("path",), "the store needs master_key_hsm_label, "
                                        "master_key_env or master_key_file"))
        if problems:
            raise ConfigProblems(problems)
        return self


class KeyServiceSettings(Strict):
    listen: ServiceListen
    policy: str
    level: str
    keys: list[KeyName] = Field(default_factory=lambda: list(get_args(KeyName)), min_length=1)
    store: StoreSettings
    hsm: HsmSettings | None = None
    attestation: AttestationSettings = AttestationSettings()
    challenge_ttl_s: Annotated[float, Field(ge=1, le=300)] = 30.0
    max_challenges: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000  # outstanding at once
    logging: LoggingSettings = LoggingSettings()

    @model_validator(mode="after")
    def _token(self) -> KeyServiceSettings:
        if self.store.master_key_hsm_label and self.hsm is None:
            raise ConfigProblems([(("store", "master_key_hsm_label"),
                                   "needs the hsm section (the token holding the key)")])
        return self


def load_service_settings(path: str | Path) -> KeyServiceSettings:
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise ConfigError([ConfigIssue(doc.file, None, "", "top level must be a mapping")])
    settings = validate(doc, KeyServiceSettings)
    base = Path(path).parent

    def joined(value: str | None) -> str | None:
        return None if value is None else str(base / value)

    attestation = settings.attestation
    return settings.model_copy(update={
        "policy": str(base / settings.policy),
        "listen": settings.listen.model_copy(update={
            "tls_cert_file": str(base / settings.listen.tls_cert_file),
            "tls_key_file": str(base / settings.listen.tls_key_file)}),
        "store": settings.store.model_copy(update={
            "path": str(base / settings.store.path),
            "master_key_file": joined(settings.store.master_key_file)}),
        "attestation": attestation.model_copy(update={
            "amd_roots_dir": joined(attestation.amd_roots_dir),
            "intel_collateral_dir": joined(attestation.intel_collateral_dir),
            "cache_dir": joined(attestation.cache_dir)})})
