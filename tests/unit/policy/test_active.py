"""The policy set the gateway runs: selection, signatures, refusals at load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.errors import ConfigError, NoPolicyApplies
from gateway.policy.active import load_policy_set
from gateway.policy.signing import generate, sign
from gateway.settings import PolicySettings


def policy_file(directory: Path, name: str, **fields: object) -> str:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "name": name,
                                    "detectors": {"builtin": ["patterns"]}, **fields}))
    return str(path)


def test_first_applicable_policy_decides(tmp_path: Path) -> None:
    clinic = policy_file(tmp_path, "clinic", applies_to={"tenants": ["clinic"]})
    embeddings = policy_file(tmp_path, "embeddings", applies_to={"routes": ["embeddings"]})
    fallback = policy_file(tmp_path, "fallback")
    policies = load_policy_set(PolicySettings(files=[clinic, embeddings, fallback]))
    assert policies.select("clinic", "embeddings", "m").loaded.name == "clinic"
    assert policies.select("bank", "embeddings", "m").loaded.name == "embeddings"
    assert policies.select("bank", "messages", "m").loaded.name == "fallback"


def test_no_applicable_policy_refuses(tmp_path: Path) -> None:
    only = policy_file(tmp_path, "only", applies_to={"models": ["gpt-x"]})
    policies = load_policy_set(PolicySettings(files=[only]))
    with pytest.raises(NoPolicyApplies) as info:
        policies.select("t", "chat_completions", "other")
    assert (info.value.status, info.value.code) == (403, "no_policy")


def test_every_error_in_every_file_is_reported(tmp_path: Path) -> None:
    bad_action = policy_file(tmp_path, "a", actions={"PERSN": "redact"})
    hashing = policy_file(tmp_path, "b", actions={"EMAIL": "hash"})
    with pytest.raises(ConfigError) as info:
        load_policy_set(PolicySettings(files=[bad_action, hashing,
                                              str(tmp_path / "none.yaml")]))
    text = str(info.value)
    assert "actions.PERSN: unknown entity type (did you mean PERSON?)" in text
    assert "the hash action needs a secret" in text
    assert "none.yaml" in text


def test_hash_action_loads_with_a_secret(tmp_path: Path) -> None:
    hashing = policy_file(tmp_path, "b", actions={"EMAIL": "hash"})
    assert load_policy_set(PolicySettings(files=[hashing]), hash_secret=True).policies


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "policy.key", tmp_path / "policy.pub"
    generate(private, public)
    return private, public


def signed_settings(files: list[str], public: Path) -> PolicySettings:
    return PolicySettings(files=files, require_signed_policies=True, public_key_file=str(public))


def test_signed_policy_loads(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    path = policy_file(tmp_path, "p")
    sign(Path(path), keys[0])
    assert load_policy_set(signed_settings([path], keys[1])).policies


def test_unsigned_policy_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    path = policy_file(tmp_path, "p")
    with pytest.raises(ConfigError, match=r"unsigned \(no p.yaml.sig\)"):
        load_policy_set(signed_settings([path], keys[1]))


def test_edited_after_signing_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    path = policy_file(tmp_path, "p")
    sign(Path(path), keys[0])
    Path(path).write_text(Path(path).read_text() + "default_action: allow\n")
    with pytest.raises(ConfigError, match="signature does not verify"):
        load_policy_set(signed_settings([path], keys[1]))


def test_unsigned_base_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    policy_file(tmp_path, "base")
    child = policy_file(tmp_path, "child", extends="base.yaml")
    sign(Path(child), keys[0])
    with pytest.raises(ConfigError, match=r"base.yaml: unsigned"):
        load_policy_set(signed_settings([child], keys[1]))


def test_signed_with_another_key_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    path = policy_file(tmp_path, "p")
    other_private, other_public = tmp_path / "o.key", tmp_path / "o.pub"
    generate(other_private, other_public)
    sign(Path(path), other_private)
    with pytest.raises(ConfigError, match="signature does not verify"):
        load_policy_set(signed_settings([path], keys[1]))


def test_require_signed_needs_a_key() -> None:
    with pytest.raises(ValueError, match="needs public_key_file"):
        PolicySettings(files=["x.yaml"], require_signed_policies=True)


def test_precomputed_clean_decision_equals_evaluation(tmp_path: Path) -> None:
    from gateway.policy.evaluate import Facts, evaluate  # noqa: PLC0415

    path = policy_file(tmp_path, "p", data_classes={"pii": {"entities": ["EMAIL"]}},
                       routing={"pii": {"block": True}})
    active = load_policy_set(PolicySettings(files=[path])).policies[0]
    assert active.clean == evaluate(active.loaded, Facts("t", "chat_completions", "m", {}))
    assert active.clean.outcome == "forward"
