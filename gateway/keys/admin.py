"""`veil hsm init|rotate|show`: the token's keys for the secrets the config labels. Keys are
made in the token (sensitive, never extractable); a rotation adds a version, it never deletes
one: older audit records verify and older sealed CKKS keys open under their own version.

What a rotation means for each secret:
    audit   new records are MAC'd under the new version and name it (`kid`)
    fhe     new CKKS epochs are sealed under it; older ones still open (`veil keys rotate`
            makes a new epoch)
    hash    the `hash` action's tokens change (the same value hashes differently from then on)
    vault   mappings already in Redis no longer open (their TTL bounds the loss)
Each takes effect when the gateway restarts.
"""

from __future__ import annotations

from gateway.errors import TokenError
from gateway.keys.sources import KINDS, GatewayKeys
from gateway.keys.token import KeyVersion
from gateway.yamlsource import KeyPath

SECRETS: dict[str, KeyPath] = {"audit": ("audit", "key_hsm_label"),
                               "hash": ("privacy", "hash_key_hsm_label"),
                               "fhe": ("fhe", "master_key_hsm_label"),
                               "vault": ("state", "vault_key_hsm_label")}


def _chosen(keys: GatewayKeys, only: list[str]) -> dict[str, tuple[KeyPath, str]]:
    """The secrets asked for (none: every one the config labels), by name."""
    labelled = keys.labels()
    chosen = {name: (where, labelled[where]) for name, where in SECRETS.items()
              if where in labelled and (not only or name in only)}
    missing = [name for name in only if name not in chosen]
    if missing:
        raise TokenError(f"the config labels no HSM key for {', '.join(missing)} (set "
                         + ", ".join(".".join(map(str, SECRETS[m])) for m in missing) + ")")
    if not chosen:
        raise TokenError("the config labels no HSM key (*_hsm_label settings)")
    return chosen


def _described(key: KeyVersion) -> str:
    locked = "sensitive" if key.sensitive else "NOT SENSITIVE"
    locked += ", not extractable" if not key.extractable else ", EXTRACTABLE"
    return f"{key.key_id} ({key.kind}, {locked})"


def init(keys: GatewayKeys, only: list[str]) -> list[str]:
    """Version 1 of each key the token lacks; existing keys are kept, never replaced."""
    token = keys.token()
    lines = []
    for name, (where, label) in _chosen(keys, only).items():
        existing = token.versions(label)
        if existing:
            lines.append(f"{name}: kept {_described(existing[-1])}: already in the token")
        else:
            lines.append(f"{name}: created {_described(token.create(label, KINDS[where]))}")
    return lines


def rotate(keys: GatewayKeys, only: list[str]) -> list[str]:
    token = keys.token()
    lines = []
    for name, (where, label) in _chosen(keys, only).items():
        older = [k.key_id for k in token.versions(label)]
        if not older:
            raise TokenError(f"{name}: no key labelled {label!r} to rotate: run `veil hsm init`")
        made = token.create(label, KINDS[where])
        lines.append(f"{name}: {made.key_id} is current; {', '.join(older)} kept")
    return lines


def show(keys: GatewayKeys) -> list[str]:
    """Labels, versions and attributes: never key material (the token will not give it)."""
    token = keys.token()
    lines = []
    for name, (_, label) in _chosen(keys, []).items():
        versions = token.versions(label)
        if not versions:
            lines.append(f"{name}: {label}: missing (run `veil hsm init`)")
        for key in versions:
            current = "  current" if key is versions[-1] else ""
            lines.append(f"{name}: {_described(key)}{current}")
    return lines
