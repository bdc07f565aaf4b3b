"""Relative paths in a config file (and in overrides of it) are relative to the file's folder,
so the same file means the same from any working directory; settings built in code have no
file and keep their paths as given."""

from __future__ import annotations

import base64
import re
import typing
from pathlib import Path
from typing import Any

import pydantic
import pytest

from gateway.settings import PATH_SETTINGS, Settings, load_settings

CONFIG = """\
backends: [{name: up, url: "http://127.0.0.1:1"}]
models: {m: [up]}
api_keys_file: keys/api-keys.yaml
policies:
  files: [policies/a.yaml, /abs/b.yaml]
  public_key_file: policies/veil.pub
audit: {path: logs/audit.jsonl, key_file: ../secrets/audit.key}
attestation: {amd_roots_dir: roots/amd, intel_collateral_dir: /srv/intel, cache_dir: cache}
fhe: {keys_dir: fhe-keys, master_key_file: secrets/master.key}
"""


def value(settings: Settings, path: tuple[str, ...]) -> Any:
    holder: Any = settings
    for part in path:
        holder = getattr(holder, part)
    return holder


@pytest.fixture
def config(tmp_path: Path) -> Path:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "config.yaml").write_text(CONFIG)
    return folder / "config.yaml"


def test_relative_paths_are_relative_to_the_config_folder(config: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    settings = load_settings(config, {})
    folder = config.parent
    assert settings.policies.files == [str(folder / "policies/a.yaml"), "/abs/b.yaml"]
    assert settings.policies.public_key_file == str(folder / "policies/veil.pub")
    assert settings.api_keys_file == str(folder / "keys/api-keys.yaml")
    assert settings.audit.path == str(folder / "logs/audit.jsonl")
    assert settings.audit.key_file == str(folder / "../secrets/audit.key")
    assert settings.attestation.amd_roots_dir == str(folder / "roots/amd")
    assert settings.attestation.intel_collateral_dir == "/srv/intel"  # absolute: unchanged
    assert settings.attestation.cache_dir == str(folder / "cache")
    assert settings.fhe.keys_dir == str(folder / "fhe-keys")
    assert settings.fhe.master_key_file == str(folder / "secrets/master.key")


def test_defaults_are_relative_to_the_config_folder_too(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("backends: []\nmodels: {}\npolicies: {files: [p]}\n")
    settings = load_settings(tmp_path / "config.yaml", {})
    assert settings.audit.path == str(tmp_path / "var/audit.jsonl")
    assert settings.fhe.keys_dir == str(tmp_path / "var/fhe-keys")
    assert settings.attestation.cache_dir == str(tmp_path / "var/attestation-cache")
    assert settings.audit.key_file is None  # unset stays unset
    assert settings.api_keys_file is None


def test_overridden_paths_are_relative_to_the_config_folder(config: Path) -> None:
    settings = load_settings(config, {"VEIL__AUDIT__PATH": "elsewhere/audit.jsonl",
                                      "VEIL__POLICIES__FILES": "[x.yaml]",
                                      "VEIL__FHE__KEYS_DIR": "/var/lib/veil/fhe"})
    assert settings.audit.path == str(config.parent / "elsewhere/audit.jsonl")
    assert settings.policies.files == [str(config.parent / "x.yaml")]
    assert settings.fhe.keys_dir == "/var/lib/veil/fhe"


def test_a_config_named_relatively_keeps_short_paths(config: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(config.parent)  # what `make run` does: config.yaml in the working directory
    settings = load_settings("config.yaml", {})
    assert settings.policies.files == ["policies/a.yaml", "/abs/b.yaml"]
    assert settings.audit.path == "logs/audit.jsonl"


def test_the_key_services_ca_file_is_relative_to_the_config_folder_too(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "backends: []\nmodels: {}\npolicies: {files: [p]}\n"
        "listen: {tls_cert_file: gw.crt, tls_key_file: gw.key}\n"
        "key_release: {url: 'https://keys.example', ca_file: ks.crt, keys: [hash],\n"
        f"  service_key: '{base64.b64encode(bytes(32)).decode()}'}}\n")
    settings = load_settings(tmp_path / "config.yaml", {})
    assert settings.key_release is not None
    assert settings.key_release.ca_file == str(tmp_path / "ks.crt")
    assert settings.hsm is None  # an optional section left out stays out


def test_settings_built_in_code_keep_their_paths() -> None:
    settings = Settings.model_validate({"backends": [], "models": {},
                                        "policies": {"files": ["policies/a.yaml"]}})
    assert settings.policies.files == ["policies/a.yaml"]  # the working directory's
    assert settings.audit.path == "var/audit.jsonl"


PATH_LIKE = re.compile(r"(^|_)(file|files|dir|path)$")


def test_every_path_setting_is_listed() -> None:
    """A new `*_file` / `*_dir` / `path` setting that is not in PATH_SETTINGS would silently be
    relative to the working directory again."""
    found = set()
    for name, info in Settings.model_fields.items():
        # an optional section (hsm, key_release) is its model or None
        section = next((a for a in typing.get_args(info.annotation) if a is not type(None)),
                       info.annotation)
        if isinstance(section, type) and issubclass(section, pydantic.BaseModel):
            found |= {(name, field) for field in section.model_fields if PATH_LIKE.search(field)}
        elif PATH_LIKE.search(name):
            found.add((name,))
    assert found == set(PATH_SETTINGS)
