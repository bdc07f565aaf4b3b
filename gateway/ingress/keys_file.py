"""API keys from a file of their own (`api_keys_file`), reloaded on change as policies are, so
a key is added or revoked on every worker and replica that reads the file without a restart.

The file holds only digests, like `config.yaml`:

    api_keys:
      - {name: alice-laptop, tenant: research, hash: "sha256:..."}
      - {name: ci, tenant: research, hash: "sha256:...", models: [small-model],
         budget: {tokens_per_day: 200000}}

A change that does not load (bad YAML, an unknown tenant, a digest listed twice) leaves the
keys in force as they were and is logged with file and line; at start it refuses the start.
A revoked key stops working on the next request after the reload: verified keys are
forgotten with every change.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import Field

from gateway.errors import ConfigError, ConfigIssue
from gateway.observability.logging import get_logger
from gateway.settings import ApiKeySettings, Strict, TenantSettings
from gateway.yamlsource import load_yaml, validate

log = get_logger("veil.keys")


class KeysFile(Strict):
    api_keys: list[ApiKeySettings] = Field(default_factory=list)


def load_keys(path: str | Path, tenants: Mapping[str, TenantSettings],
              inline: list[ApiKeySettings]) -> list[ApiKeySettings]:
    """The file's keys, checked against the tenants and the keys `config.yaml` lists itself;
    `ConfigError` naming file and line otherwise."""
    doc = load_yaml(path)
    keys = validate(doc, KeysFile).api_keys
    issues = [ConfigIssue(doc.file, doc.position(("api_keys", i, "tenant")),
                          f"api_keys[{i}].tenant", f"unknown tenant {k.tenant!r}")
              for i, k in enumerate(keys) if k.tenant not in tenants]
    issues += [ConfigIssue(doc.file, doc.position(("api_keys", i, "models")),
                           f"api_keys[{i}].models", "lists models its tenant may not use: "
                           f"{k.widens(tenants[k.tenant])}")
               for i, k in enumerate(keys) if k.tenant in tenants and k.widens(tenants[k.tenant])]
    seen = {k.hash for k in inline}
    for i, key in enumerate(keys):
        if key.hash in seen:
            issues.append(ConfigIssue(doc.file, doc.position(("api_keys", i, "hash")),
                                      f"api_keys[{i}].hash", "the same key hash is listed twice "
                                      "(here, or in config.yaml)"))
        seen.add(key.hash)
    if issues:
        raise ConfigError(issues)
    return keys


def _fingerprint(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


async def watch_keys(path: str | Path, interval_s: float, tenants: Mapping[str, TenantSettings],
                     inline: list[ApiKeySettings],
                     use: Callable[[list[ApiKeySettings]], None]) -> None:
    """Every `interval_s`, reload the file if its content changed; until cancelled."""
    file = Path(path)
    seen = _fingerprint(file)
    while True:
        await asyncio.sleep(interval_s)
        now = await asyncio.to_thread(_fingerprint, file)
        if now == seen:
            continue
        seen = now
        try:
            keys = await asyncio.to_thread(load_keys, file, tenants, inline)
        except ConfigError as exc:
            log.error("api_keys_reload_failed",  # noqa: TRY400 (the issues say it all)
                      errors=[str(i) for i in exc.issues])
            continue
        use(keys)
        log.info("api_keys_reloaded", keys=len(keys))
