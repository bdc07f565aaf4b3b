"""Load a policy: resolve `extends`, validate every file where it stands (so each error points
at the file, line and column that holds it), merge, then check the names that cross sections
(entity types, data classes). All problems are reported at once.

Merge rule: mappings merge key by key, the extending file winning; any other value (a list, a
scalar) is replaced whole. A policy that extends another can therefore tighten or loosen any
single setting, and `veil policy check` shows the result has no unknown names.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.attestation.releases import verify_release
from gateway.errors import ConfigError, ConfigIssue, EvidenceError
from gateway.policy.schema import BUILTIN_ENTITIES, Policy
from gateway.yamlsource import KeyPath, YamlDocument, dotted, load_yaml, validate

# The entity types a detector plugin declares, by reference (entry-point name or
# `module:Class`); raises LookupError, with a message, for a plugin it cannot load. Passed in,
# so that the policy format knows nothing of how detectors are loaded.
PluginEntities = Callable[[str], frozenset[str]]


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    files: tuple[str, ...]  # this file first, then the bases it extends
    digest: str  # sha256 of the merged policy: stamped on every decision

    @property
    def name(self) -> str:
        return self.policy.name


def load_policy(path: str | Path, plugin_entities: PluginEntities | None = None,
                drafts: Mapping[Path, str] | None = None) -> LoadedPolicy:
    """Load and check a policy file and the bases it extends. Without `plugin_entities`, a
    policy that names plugins is an error (its entity types could not be checked). `drafts`:
    text to read instead of a file's own (by resolved path), so an edit not yet saved is
    checked exactly as it will be once it is, `extends` and all."""
    chain = _chain(Path(path), drafts or {})
    issues: list[ConfigIssue] = []
    for doc in chain:
        try:
            validate(doc, Policy)
        except ConfigError as exc:
            issues += exc.issues
    if issues:
        raise ConfigError(issues)
    merged: dict[str, Any] = {}
    for doc in reversed(chain):
        merged = _merge(merged, doc.data)
    merged.pop("extends", None)
    policy = Policy.model_validate(merged)
    issues = _cross_checks(policy, chain, plugin_entities)
    if issues:
        raise ConfigError(issues)
    policy, issues = _with_releases(policy, chain)
    if issues:
        raise ConfigError(issues)
    released = {name: [r.bundle_sha256 for r in level.releases]  # a new release: a new digest
                for name, level in policy.trust_levels.items() if level.releases}
    digest = "sha256:" + hashlib.sha256(orjson.dumps(
        policy.model_dump(mode="json") | ({"releases": released} if released else {}),
        option=orjson.OPT_SORT_KEYS)).hexdigest()
    return LoadedPolicy(policy, tuple(d.file for d in chain), digest)


def chain_files(path: Path) -> tuple[str, ...]:
    """The file and the bases it extends, as `LoadedPolicy.files` names them; only the file
    itself when the chain cannot be read (a syntax error, a missing base)."""
    try:
        return tuple(doc.file for doc in _chain(path, {}))
    except ConfigError:
        return (str(path),)


def _with_releases(policy: Policy, chain: list[YamlDocument]
                   ) -> tuple[Policy, list[ConfigIssue]]:
    """Each level's `measurements_from` verified now, so a bundle that does not verify makes
    the policy invalid (at start and on reload) rather than its level quietly empty. Paths are
    relative to the file that names them."""
    levels = dict(policy.trust_levels)
    issues: list[ConfigIssue] = []
    for name, level in policy.trust_levels.items():
        releases = []
        for i, source in enumerate(level.measurements_from):
            path: KeyPath = ("trust_levels", name, "measurements_from", i)
            file, position = _where(chain, path)
            try:
                releases.append(verify_release(source, Path(file).parent))
            except EvidenceError as exc:
                issues.append(ConfigIssue(file, position, dotted(path), str(exc)))
        if releases and len(releases) == len(level.measurements_from):
            try:
                levels[name] = level.with_releases(releases)
            except ValueError as exc:
                file, position = _where(chain, ("trust_levels", name))
                issues.append(ConfigIssue(file, position, f"trust_levels.{name}", str(exc)))
    return policy.model_copy(update={"trust_levels": levels}), issues


def _chain(path: Path, drafts: Mapping[Path, str]) -> list[YamlDocument]:
    chain: list[YamlDocument] = []
    seen: set[Path] = set()
    current: Path | None = path
    while current is not None:
        resolved = current.resolve()
        if resolved in seen:
            first = chain[0]
            raise ConfigError([ConfigIssue(first.file, first.position(("extends",)), "extends",
                                           f"extends loops back to {current}")])
        seen.add(resolved)
        doc = load_yaml(current, drafts.get(resolved))
        if not isinstance(doc.data, dict):
            raise ConfigError([ConfigIssue(doc.file, None, "", "a policy must be a mapping")])
        chain.append(doc)
        base = doc.data.get("extends")
        if base is not None and not isinstance(base, str):
            break  # reported by validation
        if base is not None and not (current.parent / base).exists():
            raise ConfigError([ConfigIssue(doc.file, doc.position(("extends",)), "extends",
                                           f"base policy {base!r} not found next to this file")])
        current = current.parent / base if base else None
    return chain


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _where(chain: list[YamlDocument], path: KeyPath) -> tuple[str, Any]:
    """The file that holds `path` (the extending file first) and the key's position."""
    for doc in chain:
        if path in doc.key_positions or path in doc.value_positions:
            return doc.file, doc.position(path, of_key=True)
    return chain[0].file, None


def _unchecked(reference: str) -> frozenset[str]:
    raise LookupError(f"plugin {reference!r} cannot be checked here (no detector plugins "
                      "loaded)")


def _cross_checks(policy: Policy, chain: list[YamlDocument],
                  plugin_entities: PluginEntities | None) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    entities = set(BUILTIN_ENTITIES) | set(policy.detectors.deny_list)
    for i, reference in enumerate(policy.detectors.plugins):
        try:
            entities |= (plugin_entities or _unchecked)(reference)
        except LookupError as exc:
            file, position = _where(chain, ("detectors", "plugins", i))
            issues.append(ConfigIssue(file, position, f"detectors.plugins[{i}]", str(exc)))

    def unknown_entity(path: KeyPath, name: str) -> None:
        if name in entities:
            return
        hint = difflib.get_close_matches(name, sorted(entities), n=1)
        file, position = _where(chain, path)
        message = "unknown entity type" + (f" (did you mean {hint[0]}?)" if hint else "")
        issues.append(ConfigIssue(file, position, dotted(path), message))

    for entity in policy.actions:
        unknown_entity(("actions", entity), entity)
    for entity in policy.detectors.thresholds:
        unknown_entity(("detectors", "thresholds", entity), entity)
    for name, data_class in policy.data_classes.items():
        for i, entity in enumerate(data_class.entities):
            unknown_entity(("data_classes", name, "entities", i), entity)
    return issues + _reference_checks(policy, chain)


def _reference_checks(policy: Policy, chain: list[YamlDocument]) -> list[ConfigIssue]:
    """Names one section uses and another defines: data classes and trust levels."""
    issues: list[ConfigIssue] = []
    for i, semantic in enumerate(policy.semantic):
        if semantic.data_class is not None and semantic.data_class not in policy.data_classes:
            file, position = _where(chain, ("semantic", i, "data_class"))
            issues.append(ConfigIssue(file, position, f"semantic[{i}].data_class",
                                      f"unknown data class {semantic.data_class!r}"))
    for name, backend in policy.backends.items():
        if backend.require not in policy.trust_levels:
            file, position = _where(chain, ("backends", name, "require"))
            issues.append(ConfigIssue(file, position, f"backends.{name}.require",
                                      f"unknown trust level {backend.require!r}"))
    for name, rule in policy.routing.items():
        if rule.require is not None and rule.require not in policy.trust_levels:
            hint = difflib.get_close_matches(rule.require, sorted(policy.trust_levels), n=1)
            file, position = _where(chain, ("routing", name, "require"))
            issues.append(ConfigIssue(file, position, f"routing.{name}.require",
                                      f"unknown trust level {rule.require!r}"
                                      + (f" (did you mean {hint[0]}?)" if hint else
                                         " (define it under trust_levels)")))
        if name not in policy.data_classes:
            hint = difflib.get_close_matches(name, sorted(policy.data_classes), n=1)
            file, position = _where(chain, ("routing", name))
            issues.append(ConfigIssue(file, position, f"routing.{name}",
                                      "unknown data class" + (f" (did you mean {hint[0]}?)"
                                                              if hint else "")))
    return issues
