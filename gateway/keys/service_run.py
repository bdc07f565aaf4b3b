"""`veil keys seal` and `veil keys serve`: the key service's two commands, from its config file
(gateway/keys/service_config.py). `seal` generates each key the store lacks (and the store's
master key in the token, when it is labelled there and missing): never replacing one, since a
gateway's audit trail and sealed CKKS keys depend on it. `serve` refuses to start unless the
policy's trust level exists and every key it releases is in the store and opens."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

from gateway.attestation.levels import TrustLevel
from gateway.errors import ConfigError
from gateway.keys.release import IDENTITY, identity_public
from gateway.keys.sealed_store import SealedStore
from gateway.keys.service import build_service_app, service_tls, store_sealer
from gateway.keys.service_config import KeyServiceSettings, load_service_settings
from gateway.keys.token import Token
from gateway.observability.logging import configure_logging, get_logger
from gateway.plugins import plugin_entities
from gateway.policy.loader import load_policy
from gateway.server import listen_address
from gateway.yamlsource import load_yaml

log = get_logger("veil.keys.service")


@contextmanager
def _store(settings: KeyServiceSettings) -> Iterator[SealedStore]:
    """The store, open for the command's whole run (the token's session with it)."""
    token = Token.open(settings.hsm, os.environ) if settings.hsm is not None else None
    try:
        yield SealedStore(Path(settings.store.path), store_sealer(settings, token))
    finally:
        if token is not None:
            token.close()


def seal(config: str) -> list[str]:
    settings = load_service_settings(config)
    lines = []
    label = settings.store.master_key_hsm_label
    if label is not None and settings.hsm is not None:
        token = Token.open(settings.hsm, os.environ)
        try:
            if not token.versions(label):
                lines.append(f"store master key: created {token.create(label, 'aes').key_id} "
                             "in the token")
        finally:
            token.close()
    with _store(settings) as store:
        added = store.seal_missing([*settings.keys, IDENTITY])
        identity = store.open([IDENTITY])[IDENTITY]
    lines += [f"{name}: generated and sealed in {settings.store.path}" if name in added
              else f"{name}: kept (already in the store)" for name in [*settings.keys, IDENTITY]]
    return [*lines, f"service_key (each gateway's key_release.service_key): "
                    f"{identity_public(identity)}"]


def trust_level(config: str, settings: KeyServiceSettings) -> TrustLevel:
    """The policy file's level the gateways must meet; a ConfigError at `level` if absent."""
    level = load_policy(Path(settings.policy), plugin_entities).policy.trust_levels.get(
        settings.level)
    if level is None:
        doc = load_yaml(config)
        raise ConfigError([doc.issue(("level",), f"{settings.policy} has no trust level "
                                                 f"{settings.level!r}")])
    return level


def serve(config: str) -> None:
    settings = load_service_settings(config)
    configure_logging(settings.logging.level, settings.logging.format)
    level = trust_level(config, settings)
    listen = settings.listen
    with _store(settings) as store:
        app = build_service_app(settings, level, store)

        async def listening(_: web.Application) -> None:
            log.info("key_service_listening", listen=listen_address(listen.host, listen.port),
                     level=settings.level, keys=settings.keys, pid=os.getpid())

        app.on_startup.append(listening)
        web.run_app(app, host=listen.host, port=listen.port, ssl_context=service_tls(settings),
                    access_log=None, print=None)
