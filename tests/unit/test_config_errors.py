"""Where config errors point: a cross-reference error at the line of the entry that is wrong (not
at the top of the file), an error in an environment override at its variable (not at a line
the variable replaced)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.ingress.auth import hash_api_key
from gateway.settings import load_settings

POLICY = Path(__file__).parents[2] / "policies" / "default.yaml"
# Line numbers matter below: each case names the line and column of the entry it breaks.
BASE = f"""\
tenants:
  t: {{}}
api_keys:
  - name: k
    tenant: t
    hash: {hash_api_key("k")}
  - name: k2
    tenant: t
    hash: {hash_api_key("k2")}
backends:
  - name: up
    url: https://127.0.0.1:1234
  - name: other
    url: http://127.0.0.1:1235
models:
  m: [up, other]
  n: [other]
policies:
  files: [{POLICY}]
"""


def issues(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ or {})
    return [str(issue).removeprefix(f"{tmp_path}/") for issue in info.value.issues]


def test_the_base_config_is_valid(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(BASE)
    assert load_settings(tmp_path / "config.yaml", {}).models["n"] == ["other"]


@pytest.mark.parametrize(("edit", "expected"), [
    pytest.param(("    url: http://127.0.0.1:1235",
                  "    url: http://127.0.0.1:1235\n  - name: other\n    url: http://x:1"),
                 "config.yaml:15:11: backends[2].name: duplicate name 'other' (also "
                 "backends[1])", id="duplicate-backend"),
    pytest.param(("  n: [other]", "  n: []"),
                 "config.yaml:17:6: models.n: needs at least one backend", id="empty-model"),
    pytest.param(("  m: [up, other]", "  m: [up, gone]"),
                 "config.yaml:16:11: models.m[1]: unknown backend 'gone' (known: ['up', 'other'])",
                 id="unknown-backend"),
    pytest.param(("  - name: k2\n    tenant: t", "  - name: k2\n    tenant: ghost"),
                 "config.yaml:8:13: api_keys[1].tenant: unknown tenant 'ghost'",
                 id="unknown-tenant"),
    pytest.param((hash_api_key("k2"), hash_api_key("k")),
                 "config.yaml:9:11: api_keys[1].hash: the same key hash is listed twice "
                 "(also api_keys[0])", id="duplicate-hash"),
    pytest.param(("models:", "routing:\n  conversations_model: nope\nmodels:"),
                 "config.yaml:16:24: routing.conversations_model: 'nope' is not in models",
                 id="conversations-model"),
    pytest.param(("models:", "fhe:\n  embedding_backend: other\nmodels:"),
                 "config.yaml:16:22: fhe.embedding_backend: 'other' must be a backend with "
                 "attestation (embeddings are as sensitive as the prompt)",
                 id="embedding-backend"),
    pytest.param(("models:", "fhe:\n  keys_in: redis\nmodels:"),
                 "config.yaml:16:12: fhe.keys_in: redis needs state.redis_url (the epochs live "
                 "there)", id="keys-in-redis"),
    # the sections' own cross-checks point at the key that asks for the missing one
    pytest.param(("models:", "audit:\n  path: a.jsonl\n  enabled: true\nmodels:"),
                 "config.yaml:17:12: audit.enabled: audit needs key_env, key_file, "
                 "key_hsm_label or key_release.keys: [audit]",
                 id="audit-key"),
    pytest.param(("    url: https://127.0.0.1:1234",
                  "    url: http://127.0.0.1:1234\n    attestation: {}"),
                 "config.yaml:12:10: backends[0].url: an attested backend needs an https:// url "
                 "(evidence is bound to its TLS key)", id="attested-over-http"),
    pytest.param(("  files:", "  require_signed_policies: true\n  files:"),
                 "config.yaml:19:28: policies.require_signed_policies: needs public_key_file",
                 id="signed-policies"),
    pytest.param(("models:", "state:\n  vault_key_env: VAULT\nmodels:"),
                 "config.yaml:16:18: state.vault_key_env: needs redis_url (the vault lives in "
                 "Redis)", id="vault-without-redis"),
    pytest.param(("models:", "fhe:\n  scorers: [{name: s, url: http://127.0.0.1:1}]\nmodels:"),
                 "config.yaml:16:12: fhe.scorers: scorers need master_key_env, master_key_file, "
                 "master_key_hsm_label or key_release.keys: [fhe] (the key that seals the CKKS "
                 "secret key at rest)", id="scorers-master-key"),
    pytest.param(("models:", "hsm: {module: /x.so, token_label: t, pin_env: P}\n"
                             "audit:\n  key_env: A\n  key_hsm_label: a\nmodels:"),
                 "config.yaml:18:18: audit.key_hsm_label: only one of key_env, key_file, "
                 "key_hsm_label (also key_env)", id="audit-two-key-sources"),
    pytest.param(("models:", "privacy:\n  hash_key_hsm_label: h\nmodels:"),
                 "config.yaml:16:23: privacy.hash_key_hsm_label: needs the hsm section (the "
                 "token holding the key)", id="hsm-label-without-hsm"),
])
def test_a_cross_reference_error_points_at_its_entry(tmp_path: Path, edit: tuple[str, str],
                                                      expected: str) -> None:
    assert edit[0] in BASE
    assert issues(tmp_path, BASE.replace(*edit, 1)) == [expected]


def test_every_cross_reference_error_is_listed_at_its_own_line(tmp_path: Path) -> None:
    text = BASE.replace("  n: [other]", "  n: [gone]").replace("  - name: k2\n    tenant: t",
                                                                "  - name: k2\n"
                                                                "    tenant: ghost")
    assert [i.split(": ")[0] for i in issues(tmp_path, text)] == [
        "config.yaml:17:7", "config.yaml:8:13"]


def test_an_override_that_fails_is_named_by_its_variable(tmp_path: Path) -> None:
    text = BASE + "limits:\n  max_body_bytes: 1000\n"  # the file's line is not what failed
    assert issues(tmp_path, text, {"VEIL__LIMITS__MAX_BODY_BYTES": "abc"}) == [
        "$VEIL__LIMITS__MAX_BODY_BYTES: limits.max_body_bytes: Input should be a valid integer, "
        "unable to parse string as an integer (got 'abc')"]


@pytest.mark.parametrize(("environ", "expected"), [
    pytest.param({"VEIL__LISTEN__PROT": "1"},
                 "$VEIL__LISTEN__PROT: listen.prot: unknown key (did you mean port?)",
                 id="unknown-key"),
    pytest.param({"VEIL__LISTEN": "{port: abc}"},
                 "$VEIL__LISTEN: listen.port: Input should be a valid integer, unable to parse "
                 "string as an integer (got 'abc')", id="a-whole-section"),
    pytest.param({"VEIL__ROUTING__CONVERSATIONS_MODEL": "nope"},
                 "$VEIL__ROUTING__CONVERSATIONS_MODEL: routing.conversations_model: 'nope' is "
                 "not in models", id="cross-reference"),
    pytest.param({"VEIL__LOGGING__CORRELATION_KEY_ENV": "LOG_KEY"},
                 "$VEIL__LOGGING__CORRELATION_KEY_ENV: logging.correlation_key_env: environment "
                 "variable LOG_KEY must hold at least 16 characters of secret",
                 id="missing-secret"),
    pytest.param({"VEIL__LIMITS__MAX_BODY_BYTES": "[1"},
                 "$VEIL__LIMITS__MAX_BODY_BYTES: limits.max_body_bytes: value is not valid YAML",
                 id="not-yaml"),
    pytest.param({"VEIL__": "1"}, "$VEIL__: names no setting", id="no-setting"),
])
def test_override_errors_name_the_variable(tmp_path: Path, environ: dict[str, str],
                                           expected: str) -> None:
    assert issues(tmp_path, BASE, environ) == [expected]


def test_file_and_override_errors_are_listed_together(tmp_path: Path) -> None:
    text = BASE + "logging:\n  level: loud\n"
    assert issues(tmp_path, text, {"VEIL__LISTEN__PORT": "-1"}) == [
        "$VEIL__LISTEN__PORT: listen.port: Input should be greater than or equal to 0 (got -1)",
        "config.yaml:21:10: logging.level: Input should be 'debug', 'info', 'warning' or "
        "'error' (got 'loud')"]


def test_a_missing_credential_names_the_variable_at_the_line_naming_it(tmp_path: Path) -> None:
    text = BASE.replace("    url: http://127.0.0.1:1235",
                        "    url: http://127.0.0.1:1235\n    api_key_env: OTHER_KEY")
    assert issues(tmp_path, text) == [
        "config.yaml:15:18: backends[1].api_key_env: environment variable OTHER_KEY is not set "
        "or empty"]
    assert issues(tmp_path, text, {"OTHER_KEY": ""})[0].endswith("OTHER_KEY is not set or empty")
