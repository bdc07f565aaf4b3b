"""The JSON Schemas editors check config.yaml and policies against: current with the code, and
named at the top of every file they are for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.cli import main
from gateway.settings import Settings

ROOT = Path(__file__).parents[2]
CONFIG_SCHEMA = ROOT / "config.schema.json"
POLICIES = sorted(p for p in (ROOT / "policies").glob("*.yaml")
                  if not p.name.endswith(".cases.yaml"))


def schema_comment(path: Path) -> Path:
    """The file the first line's `# yaml-language-server: $schema=...` names."""
    first = path.read_text().splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix), f"{path.name}: first line must be {prefix}..."
    return path.parent / first.removeprefix(prefix)


def checker(schema_file: Path) -> jsonschema.Draft202012Validator:
    schema = json.loads(schema_file.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_published_config_schema_matches_the_code() -> None:
    assert json.loads(CONFIG_SCHEMA.read_text()) == Settings.model_json_schema(), \
        "regenerate: veil config schema > config.schema.json"


def test_veil_config_schema_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(CONFIG_SCHEMA.read_text())


def configmap_config() -> dict[str, Any]:
    manifest = yaml.safe_load((ROOT / "deploy/kubernetes/configmap.yaml").read_text())
    return dict(yaml.safe_load(manifest["data"]["config.yaml"]))


def test_the_shipped_configs_pass_the_schema() -> None:
    valid = checker(CONFIG_SCHEMA)
    valid.validate(yaml.safe_load((ROOT / "config.yaml").read_text()))
    valid.validate(configmap_config())


@pytest.mark.parametrize("edit", [
    {"listen": {"prot": 8080}},             # an unknown key
    {"listen": {"port": "eighty"}},         # a wrong type
    {"routing": {"balance": "random"}},     # not one of the choices
    {"limits": {"max_body_bytes": 0}},      # out of range
], ids=["unknown-key", "type", "choice", "range"])
def test_the_schema_flags_what_the_gateway_refuses(edit: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for section, values in edit.items():
        config[section] = {**config[section], **values}
    assert list(checker(CONFIG_SCHEMA).iter_errors(config))


def test_config_yaml_names_its_schema() -> None:
    assert schema_comment(ROOT / "config.yaml") == CONFIG_SCHEMA


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_every_example_policy_names_the_policy_schema(policy: Path) -> None:
    schema = schema_comment(policy)
    assert schema == ROOT / "policies" / "policy.schema.json"
    checker(schema).validate(yaml.safe_load(policy.read_text()))
