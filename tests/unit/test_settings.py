from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.ingress.auth import hash_api_key
from gateway.settings import load_settings

DEFAULT_POLICY = Path(__file__).parents[2] / "policies" / "default.yaml"
GOOD = f"""\
listen:
  port: 9000
tenants:
  t: {{}}
api_keys:
  - name: k
    tenant: t
    hash: {hash_api_key("k")}
backends:
  - name: up
    url: http://127.0.0.1:1234/
models:
  m: [up]
policies:
  files: [{DEFAULT_POLICY}]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def errors(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ or {})
    return [str(issue) for issue in info.value.issues]


def test_repo_config_is_valid() -> None:
    settings = load_settings(Path(__file__).parents[2] / "config.yaml", {})
    assert settings.listen.port == 8080
    assert settings.models["veil-demo"] == ["demo-openai", "demo-anthropic"]


def test_good_config(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), {})
    assert settings.backends[0].url == "http://127.0.0.1:1234"  # trailing slash dropped
    assert settings.limits.max_body_bytes == 10 * 1024 * 1024


def test_env_override(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), {"VEIL__LISTEN__PORT": "9100",
                                                     "VEIL__LOGGING__LEVEL": "debug"})
    assert settings.listen.port == 9100
    assert settings.logging.level == "debug"


@pytest.mark.parametrize(("edit", "expected"), [
    (("  port: 9000", "  prot: 9000"),
     "config.yaml:2:3: listen.prot: unknown key (did you mean port?)"),
    (("  port: 9000", "  port: nine"),
     "config.yaml:2:9: listen.port: Input should be a valid integer"),
    (("    url: http://127.0.0.1:1234/", "    url: ftp://x"),
     "config.yaml:11:10: backends[0].url: must be an http"),
    (("  m: [up]", "  m: [down]"), "config.yaml:13:7: models.m[0]: unknown backend 'down'"),
    (("    tenant: t", "    tenant: nobody"),
     "config.yaml:7:13: api_keys[0].tenant: unknown tenant 'nobody'"),
    (("    hash: sha256:", "    hash: md5:"),
     "config.yaml:8:11: api_keys[0].hash: must be 'sha256:'"),
    (("listen:\n", "listen:\n  port: 1\n"), "config.yaml:3:3: listen.port: duplicate key"),
    (("models:", "models: ["), "config.yaml:14:1: invalid YAML: expected ',' or ']'"),
    (("models:", "models: ["), "(while parsing a flow sequence at line 12, column 9)"),
])
def test_errors_name_file_line_key(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    text = GOOD.replace(*edit, 1)
    assert any(expected in e for e in errors(tmp_path, text)), errors(tmp_path, text)


def test_missing_upstream_credential_refuses_start(tmp_path: Path) -> None:
    text = GOOD.replace("    url: http://127.0.0.1:1234/",
                        "    url: http://127.0.0.1:1234/\n    api_key_env: UPSTREAM_KEY")
    assert errors(tmp_path, text) == [
        f"{tmp_path}/config.yaml:12:18: backends[0].api_key_env: "
        "environment variable UPSTREAM_KEY is not set or empty"]
    assert load_settings(write(tmp_path, text), {"UPSTREAM_KEY": "s"}).backends[0].api_key_env


def test_all_errors_are_listed(tmp_path: Path) -> None:
    text = GOOD.replace("  port: 9000", "  prot: 9000").replace("  - name: up", "  - nme: up")
    found = errors(tmp_path, text)
    assert any("listen.prot" in e for e in found)
    assert any("backends[0].nme" in e for e in found)


def test_the_vault_key_is_checked_and_needs_redis(tmp_path: Path) -> None:
    shared = GOOD + "state: {redis_url: redis://127.0.0.1:6379/0, vault_key_env: VAULT}\n"
    problems = errors(tmp_path, shared, {"VAULT": "too-short"})
    assert len(problems) == 1
    assert problems[0].endswith("state.vault_key_env: environment variable VAULT must hold at "
                                "least 32 characters of secret")
    settings = load_settings(write(tmp_path, shared), {"VAULT": "v" * 32})
    assert settings.state.vault_key_env == "VAULT"
    alone = GOOD + "state: {vault_key_env: VAULT}\n"
    assert any("state.vault_key_env: needs redis_url" in p for p in errors(tmp_path, alone))


def test_tls_needs_certificate_and_key_and_self_attestation_needs_tls(tmp_path: Path) -> None:
    half = GOOD.replace("  port: 9000", "  port: 9000\n  tls_cert_file: gw.crt")
    assert any("tls_cert_file and tls_key_file go together" in e
               for e in errors(tmp_path, half))
    blind = GOOD + "self_attestation: {enabled: true}\n"
    assert any("self_attestation.enabled: needs listen.tls_cert_file" in e
               for e in errors(tmp_path, blind))
    served = GOOD.replace("  port: 9000", "  port: 9000\n  tls_cert_file: gw.crt\n"
                          "  tls_key_file: gw.key") + "self_attestation: {enabled: true}\n"
    settings = load_settings(write(tmp_path, served), {})
    assert settings.listen.tls_cert_file == str(tmp_path / "gw.crt")
    assert settings.self_attestation.tsm_root == "/sys/kernel/config/tsm/report"
