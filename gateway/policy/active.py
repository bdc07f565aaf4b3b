"""The policies in force: loaded, verified, ready to decide.

A `PolicySet` is immutable. A request takes the current set once, when it starts, and keeps it
to the end, so a reload never changes the rules under a request in flight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.attestation.levels import TrustLevel
from gateway.errors import ConfigError, ConfigIssue, NoPolicyApplies, SignatureError
from gateway.policy.evaluate import Decision, Facts, applies, evaluate
from gateway.policy.loader import LoadedPolicy, PluginEntities, load_policy
from gateway.policy.schema import Policy
from gateway.policy.signing import load_public_key, verify_chain
from gateway.settings import PolicySettings


@dataclass(frozen=True)
class ActivePolicy:
    loaded: LoadedPolicy
    clean: Decision  # the decision when nothing is found: most requests, computed once

    @property
    def policy(self) -> Policy:
        return self.loaded.policy

    @property
    def digest(self) -> str:
        return self.loaded.digest


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[ActivePolicy, ...]

    def select(self, tenant: str, route: str, model: str) -> ActivePolicy:
        for active in self.policies:
            if applies(active.policy, tenant, route, model):
                return active
        raise NoPolicyApplies

    def trust_levels(self) -> list[tuple[str, str, TrustLevel]]:
        """(policy digest, level name, level) of every policy: what attestation judges by."""
        return [(active.digest, name, level) for active in self.policies
                for name, level in active.policy.trust_levels.items()]

    def describe(self) -> list[dict[str, str]]:
        return [{"name": p.loaded.name, "file": p.loaded.files[0], "digest": p.digest}
                for p in self.policies]


def load_policy_set(settings: PolicySettings, *, hash_secret: bool = False,
                    plugin_entities: PluginEntities | None = None) -> PolicySet:
    """Load, validate and (when required) verify every configured policy; raise `ConfigError`
    listing every problem in every file. `hash_secret`: whether the gateway has the secret the
    `hash` action needs."""
    public_key = _public_key(settings)
    issues: list[ConfigIssue] = []
    active: list[ActivePolicy] = []
    for file in settings.files:
        try:
            loaded = load_policy(file, plugin_entities)
            if public_key is not None:
                verify_chain(loaded.files, public_key)
        except ConfigError as exc:
            issues += exc.issues
            continue
        except SignatureError as exc:
            issues.append(ConfigIssue(file, None, "signature", str(exc)))
            continue
        except OSError as exc:
            issues.append(ConfigIssue(file, None, "", f"cannot read: {exc.strerror}"))
            continue
        unusable = hash_issue(file, loaded, hash_secret)
        if unusable is not None:
            issues.append(unusable)
            continue
        active.append(ActivePolicy(loaded, evaluate(loaded, Facts("", "", "", {}))))
    if issues:
        raise ConfigError(issues)
    return PolicySet(tuple(active))


def watched_files(settings: PolicySettings, current: PolicySet) -> list[Path]:
    """Every file a reload would read: the configured policies, their bases, signatures."""
    files = {Path(f) for f in settings.files}
    files |= {Path(f) for p in current.policies for f in p.loaded.files}
    files |= {f.with_name(f.name + ".sig") for f in list(files)}
    if settings.public_key_file:
        files.add(Path(settings.public_key_file))
    return sorted(files)


def fingerprint(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detection: modification time and size (a missing file counts too)."""
    out = []
    for file in files:
        try:
            stat = os.stat(file)
        except OSError:
            out.append((str(file), -1, -1))
        else:
            out.append((str(file), stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def _public_key(settings: PolicySettings) -> Ed25519PublicKey | None:
    if not settings.require_signed_policies:
        return None
    key_file = settings.public_key_file or ""
    try:
        return load_public_key(Path(key_file))
    except (OSError, ValueError, SignatureError) as exc:
        raise ConfigError([ConfigIssue(key_file, None, "policies.public_key_file",
                                       f"not a usable Ed25519 public key: "
                                       f"{type(exc).__name__}")]) from None


def hash_issue(file: str, loaded: LoadedPolicy, hash_secret: bool) -> ConfigIssue | None:
    """Why a valid policy cannot run on a gateway without the `hash` action's secret."""
    policy = loaded.policy
    if hash_secret or (policy.default_action != "hash" and "hash" not in policy.actions.values()):
        return None
    return ConfigIssue(file, None, "actions", "the hash action needs a secret: set "
                       "privacy.hash_key_env in the gateway config")
