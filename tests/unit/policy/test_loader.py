from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.policy.loader import load_policy
from gateway.policy.schema import Policy

ROOT = Path(__file__).parents[3]
GOOD = """\
version: 1
name: team
detectors:
  thresholds:
    PERSON: 0.6
  deny_list:
    CODENAME: [Project Falcon]
default_action: pseudonymize
actions:
  CREDIT_CARD: block
  CODENAME: redact
data_classes:
  pci:
    entities: [CREDIT_CARD, IBAN]
routing:
  pci: {require: confidential-cpu}
trust_levels:
  confidential-cpu:
    sev-snp:
      measurements: [abababababababababababababababababababababababababababababababababababababababababababababababab]
"""  # noqa: E501


def errors(tmp_path: Path, text: str, name: str = "p.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    return [str(issue).replace(f"{tmp_path}/", "") for issue in info.value.issues]


def test_good_policy_loads(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(GOOD)
    loaded = load_policy(tmp_path / "p.yaml")
    assert loaded.policy.actions["CREDIT_CARD"] == "block"
    assert loaded.digest.startswith("sha256:")


@pytest.mark.parametrize(("edit", "expected"), [
    (("  CREDIT_CARD: block", "  PERSN: block"),
     "p.yaml:10:3: actions.PERSN: unknown entity type (did you mean PERSON?)"),
    (("  CREDIT_CARD: block", "  CREDIT_CARD: blok"), "p.yaml:10:16: actions.CREDIT_CARD: Input "
                                                     "should be 'pseudonymize', 'redact', 'hash', "
                                                     "'block' or 'allow' (got 'blok')"),
    (("version: 1", "version: 2"), "p.yaml:1:10: version: Input should be 1 (got 2)"),
    (("version: 1\n", ""), "p.yaml:1:1: version: Field required"),
    (("default_action:", "default_acton:"),
     "p.yaml:8:1: default_acton: unknown key (did you mean default_action?)"),
    (("  thresholds:", "  threshold:"),
     "p.yaml:4:3: detectors.threshold: unknown key (did you mean thresholds?)"),
    (("    PERSON: 0.6", "    PERSON: 1.6"),
     "p.yaml:5:13: detectors.thresholds.PERSON: Input should be less than or equal to 1"),
    (("    PERSON: 0.6", "    PERSONS: 0.6"),
     "p.yaml:5:5: detectors.thresholds.PERSONS: unknown entity type (did you mean PERSON?)"),
    (("[CREDIT_CARD, IBAN]", "[CREDIT_CARD, IBAM]"),
     "p.yaml:14:29: data_classes.pci.entities[1]: unknown entity type (did you mean IBAN?)"),
    (("  pci: {require", "  pcj: {require"),
     "p.yaml:16:3: routing.pcj: unknown data class (did you mean pci?)"),
    (("{require: confidential-cpu}", "{require: confidential-cp}"),
     "p.yaml:16:9: routing.pci.require: unknown trust level 'confidential-cp' (did you mean "
     "confidential-cpu?)"),
    (("      measurements: [", "      measurement: ["),
     "p.yaml:20:7: trust_levels.confidential-cpu.sev-snp.measurement: unknown key"),
    (("{require: confidential-cpu}", "{require: x, block: true}"),
     "p.yaml:16:8: routing.pci: give exactly one of"),
    (("name: team", "name: Team Policy"), "p.yaml:2:7: name: String should match pattern"),
    (("actions:\n", "actions:\n  EMAIL: redact\n  EMAIL: allow\n"),
     "p.yaml:11:3: actions.EMAIL: duplicate key"),
    (("routing:", "routing: ["), "invalid YAML"),
    (("version: 1", "version: 1\nextends: missing.yaml"),
     "p.yaml:2:10: extends: base policy 'missing.yaml' not found next to this file"),
])
def test_errors_name_file_line_key_and_hint(tmp_path: Path, edit: tuple[str, str],
                                            expected: str) -> None:
    found = errors(tmp_path, GOOD.replace(*edit, 1))
    assert any(e.startswith(expected) or expected in e for e in found), found


def test_all_errors_listed_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("  CREDIT_CARD: block", "  PERSN: block").replace(
        "[CREDIT_CARD, IBAN]", "[CREDIT_CARD, IBAM]")
    assert len(errors(tmp_path, text)) == 2


def test_extends_overrides_and_merges(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(GOOD)
    (tmp_path / "child.yaml").write_text("""\
version: 1
name: child
extends: base.yaml
actions:
  CREDIT_CARD: pseudonymize
  CODENAME: block
detectors:
  allow_list: [EKS]
""")
    policy = load_policy(tmp_path / "child.yaml").policy
    assert policy.name == "child"
    assert policy.actions == {"CREDIT_CARD": "pseudonymize", "CODENAME": "block"}
    assert policy.detectors.thresholds == {"PERSON": 0.6}  # kept from the base
    assert policy.detectors.deny_list == {"CODENAME": ["Project Falcon"]}  # base entity usable
    assert policy.detectors.allow_list == ["EKS"]
    assert policy.routing["pci"].require == "confidential-cpu"


def test_errors_in_a_base_point_into_the_base(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(GOOD.replace("default_action:", "default_acton:"))
    found = errors(tmp_path, "version: 1\nname: child\nextends: base.yaml\n", name="child.yaml")
    assert found == ["base.yaml:8:1: default_acton: unknown key (did you mean default_action?)"]


def test_extends_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 1\nname: a\nextends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("version: 1\nname: b\nextends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends loops back"):
        load_policy(tmp_path / "a.yaml")


def test_plugin_entities_are_known(tmp_path: Path) -> None:
    text = GOOD.replace("detectors:\n", "detectors:\n  plugins: [employee_id]\n").replace(
        "  CODENAME: redact", "  EMPLOYEE_ID: block")
    (tmp_path / "p.yaml").write_text(text)
    plugins = {"employee_id": frozenset({"EMPLOYEE_ID"})}
    loaded = load_policy(tmp_path / "p.yaml", plugins.__getitem__)
    assert loaded.policy.actions["EMPLOYEE_ID"] == "block"
    # the policy format knows plugins only through what it is handed
    with pytest.raises(ConfigError, match=r"plugins\[0\]: plugin 'employee_id' cannot be"):
        load_policy(tmp_path / "p.yaml")


@pytest.mark.parametrize("name", ["default", "healthcare", "finance", "engineering"])
def test_example_policies_are_valid(name: str) -> None:
    loaded = load_policy(ROOT / "policies" / f"{name}.yaml")
    assert loaded.policy.fail_mode.detector == "closed"


def test_published_schema_matches_the_code() -> None:
    published = json.loads((ROOT / "policies/policy.schema.json").read_text())
    assert published == Policy.model_json_schema(), \
        "regenerate: veil policy schema > policies/policy.schema.json"


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("  CREDIT_CARD: block", "  PERSN: block"))
    good = ROOT / "policies/finance.yaml"
    assert main(["policy", "check", str(good)]) == 0
    assert main(["policy", "check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"ok: {good}" in out
    assert f"{bad}:10:3: actions.PERSN: unknown entity type (did you mean PERSON?)" in out


def test_a_draft_is_loaded_in_place_of_its_file_extends_and_all(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("version: 1\nname: base\ndefault_action: redact\n")
    child = tmp_path / "child.yaml"
    child.write_text("version: 1\nname: child\nextends: base.yaml\n")
    draft = "version: 1\nname: child\nextends: base.yaml\nactions:\n  EMAIL: block\n"
    loaded = load_policy(child, drafts={child.resolve(): draft})
    assert loaded.policy.actions == {"EMAIL": "block"}
    assert loaded.policy.default_action == "redact"  # the base, read from disk
    assert loaded.digest != load_policy(child).digest
    with pytest.raises(ConfigError) as broken:  # a draft of the base, through the child
        load_policy(child, drafts={(tmp_path / "base.yaml").resolve():
                                   "version: 1\nname: base\ndefault_action: maybe\n"})
    assert "base.yaml:3:" in str(broken.value)
    assert child.read_text() == "version: 1\nname: child\nextends: base.yaml\n"
