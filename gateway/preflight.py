"""What `veil serve` checks before it starts serving, so that a gateway that would fail on its
first request refuses to start instead: every policy loads and verifies (with the plugins it
names), the HSM opens and holds every key the config labels, the sealed CKKS secret key opens,
the API keys file loads, the TLS certificate and key load, and a gateway told to attest itself
has the platform's report interface. `load_settings` only
parses and validates; everything that reads other files or keys happens here, with errors
positioned in the config file (or in the file that is wrong) like its own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

from gateway.attestation.self_evidence import tsm_root
from gateway.errors import (
    ConfigError,
    ConfigIssue,
    CustodyError,
    EvidenceError,
    KeyUnavailable,
    TokenError,
)
from gateway.fhe.keys import KeyStore, read_master_key
from gateway.fhe.shared_keys import one_off_store
from gateway.ingress.keys_file import load_keys
from gateway.keys.sources import KINDS, GatewayKeys
from gateway.plugins import plugin_entities
from gateway.policy.active import PolicySet, load_policy_set
from gateway.server import tls_context
from gateway.settings import Settings
from gateway.yamlsource import load_yaml


def preflight(config_path: str | Path, settings: Settings,
              environ: Mapping[str, str] | None = None,
              released: Mapping[str, bytes] | None = None) -> PolicySet:
    """Raise `ConfigError` listing what would stop the gateway; return the policies loaded,
    for the process that goes on to serve with them. `released`: the keys a key service
    released to it (key_release)."""
    env = os.environ if environ is None else environ
    hash_env = settings.privacy.hash_key_env
    has_hash_key = bool(settings.privacy.hash_key_hsm_label or settings.released("hash")
                        or (hash_env and env.get(hash_env)))
    policies = load_policy_set(settings.policies, hash_secret=has_hash_key,
                               plugin_entities=plugin_entities)
    keys = GatewayKeys(settings, env, released)
    try:
        _open_hsm_keys(config_path, settings, keys)
        _open_fhe_key(config_path, settings, env, keys)
    finally:
        keys.close()  # the serving process opens its own session
    serving_identity(config_path, settings)
    if settings.api_keys_file:
        load_keys(settings.api_keys_file, settings.tenants, settings.api_keys)
    return policies


def serving_identity(config_path: str | Path, settings: Settings) -> None:
    """The TLS certificate and key load; with self_attestation or key_release, configfs-tsm is
    there. `veil serve` checks this before it asks a key service for keys, so the key the
    evidence binds is the one it serves."""
    section, problem = "listen", None
    try:
        tls_context(settings.listen)
        if settings.self_attestation.enabled or settings.key_release is not None:
            section = "self_attestation"
            tsm_root(settings)
    except OSError as exc:  # ssl.SSLError too: a key that is not the certificate's
        problem = f"TLS certificate or key: {exc.strerror or exc}"
    except EvidenceError as exc:
        problem = str(exc)
    if problem is not None:
        doc = load_yaml(config_path)
        raise ConfigError([ConfigIssue(doc.file, doc.position((section,)), section, problem)])


def _open_hsm_keys(config_path: str | Path, settings: Settings, keys: GatewayKeys) -> None:
    """The token opens with the PIN, and holds each labelled key, of the kind its secret
    needs; each problem at the line that names it."""
    if settings.hsm is None:
        return
    doc = load_yaml(config_path)
    try:
        token = keys.token()
        issues = []
        for where, label in keys.labels().items():
            try:
                current = token.current(label)
            except TokenError as exc:
                issues.append(doc.issue(where, str(exc)))
                continue
            if current.kind != KINDS[where]:
                issues.append(doc.issue(where, f"{label!r} is an {current.kind} key; this "
                                               f"secret needs an {KINDS[where]} key"))
    except TokenError as exc:
        raise ConfigError([doc.issue(("hsm", exc.setting) if exc.setting else ("hsm",),
                                     str(exc))]) from None
    except KeyUnavailable as exc:
        raise ConfigError([doc.issue(("hsm",), exc.message)]) from None
    if issues:
        raise ConfigError(issues)


def _open_fhe_key(config_path: str | Path, settings: Settings,
                  environ: Mapping[str, str], keys: GatewayKeys) -> None:
    """With scorers configured, the sealed secret key must open now, not on the first
    request."""
    fhe = settings.fhe
    if not fhe.scorers:
        return
    try:
        master = keys.fhe_master() if fhe.master_key_hsm_label or settings.released("fhe") \
            else read_master_key(fhe.master_key_env, fhe.master_key_file, environ)
        if fhe.keys_in == "redis" and isinstance(master, bytes):
            asyncio.run(_open_shared_key(settings, master))
        else:
            KeyStore(Path(fhe.keys_dir), master).load()
    except (CustodyError, KeyUnavailable) as exc:
        doc = load_yaml(config_path)
        raise ConfigError([ConfigIssue(doc.file, doc.position(("fhe",)), "fhe",
                                       str(exc))]) from None


async def _open_shared_key(settings: Settings, master: bytes) -> None:
    """The newest epoch in Redis opens (Redis unreachable: refused, like a missing store)."""
    async with one_off_store(settings.state.redis_url or "", master) as store:
        key_id = await store.newest_id()
        if key_id is None:
            raise CustodyError("no FHE key in Redis (fhe.keys_in: redis): run `veil keys init`")
        await store.load(key_id)
