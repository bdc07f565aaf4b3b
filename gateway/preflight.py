"""What `veil serve` checks before it starts serving, so that a gateway that would fail on its
first request refuses to start instead: every policy loads and verifies (with the plugins it
names), the sealed CKKS secret key opens, the API keys file loads, the TLS certificate and key
load, and a gateway told to attest itself has the platform's report interface. `load_settings` only
parses and validates; everything that reads other files or keys happens here, with errors
positioned in the config file (or in the file that is wrong) like its own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

from gateway.attestation.self_evidence import tsm_root
from gateway.errors import ConfigError, ConfigIssue, CustodyError, EvidenceError
from gateway.fhe.keys import KeyStore, read_master_key
from gateway.fhe.shared_keys import one_off_store
from gateway.ingress.keys_file import load_keys
from gateway.plugins import plugin_entities
from gateway.policy.active import PolicySet, load_policy_set
from gateway.server import tls_context
from gateway.settings import Settings
from gateway.yamlsource import load_yaml


def preflight(config_path: str | Path, settings: Settings,
              environ: Mapping[str, str] | None = None) -> PolicySet:
    """Raise `ConfigError` listing what would stop the gateway; return the policies loaded,
    for the process that goes on to serve with them."""
    env = os.environ if environ is None else environ
    hash_env = settings.privacy.hash_key_env
    policies = load_policy_set(settings.policies, hash_secret=bool(hash_env and env.get(hash_env)),
                               plugin_entities=plugin_entities)
    _open_fhe_key(config_path, settings, env)
    _serving_identity(config_path, settings)
    if settings.api_keys_file:
        load_keys(settings.api_keys_file, settings.tenants, settings.api_keys)
    return policies


def _serving_identity(config_path: str | Path, settings: Settings) -> None:
    """The TLS certificate and key load; with self_attestation, configfs-tsm is there."""
    section, problem = "listen", None
    try:
        tls_context(settings.listen)
        if settings.self_attestation.enabled:
            section = "self_attestation"
            tsm_root(settings)
    except OSError as exc:  # ssl.SSLError too: a key that is not the certificate's
        problem = f"TLS certificate or key: {exc.strerror or exc}"
    except EvidenceError as exc:
        problem = str(exc)
    if problem is not None:
        doc = load_yaml(config_path)
        raise ConfigError([ConfigIssue(doc.file, doc.position((section,)), section, problem)])


def _open_fhe_key(config_path: str | Path, settings: Settings,
                  environ: Mapping[str, str]) -> None:
    """With scorers configured, the sealed secret key must open now, not on the first
    request."""
    fhe = settings.fhe
    if not fhe.scorers:
        return
    try:
        master = read_master_key(fhe.master_key_env, fhe.master_key_file, environ)
        if fhe.keys_in == "redis":
            asyncio.run(_open_shared_key(settings, master))
        else:
            KeyStore(Path(fhe.keys_dir), master).load()
    except CustodyError as exc:
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
