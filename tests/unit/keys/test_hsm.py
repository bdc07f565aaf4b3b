"""The gateway's keys in a real SoftHSM2 token: made there locked (sensitive, never
extractable), rotated without losing what older versions made, every failure a clear refusal
(module, token, PIN, label, a token removed mid-run) and never a fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pkcs11
import pytest
import yaml
from pkcs11 import Attribute, ObjectClass

from gateway.cli import main
from gateway.errors import ConfigError, KeyUnavailable, TokenError
from gateway.fhe.keys import KeyStore
from gateway.keys.material import TokenSealer, TokenSigner
from gateway.keys.sources import GatewayKeys
from gateway.observability.audit import AuditLog, verify
from gateway.preflight import preflight
from gateway.settings import load_settings
from tests.servers import TEST_POLICY
from tests.softhsm import MODULE, PIN, PIN_ENV, TOKEN, SoftHsm


def write_config(tmp_path: Path, softhsm: SoftHsm, labels: dict[str, str],
                 **sections: Any) -> Path:
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(TEST_POLICY))
    data: dict[str, Any] = {
        "backends": [], "models": {}, "policies": {"files": ["p.yaml"]},
        "hsm": softhsm.section(),
        "audit": {"enabled": True, "path": "audit.jsonl", "key_hsm_label": labels["audit"]},
        "privacy": {"hash_key_hsm_label": labels["hash"]},
        "fhe": {"keys_dir": "fhe-keys", "master_key_hsm_label": labels["fhe"]},
        **sections}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def pin(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PIN_ENV, PIN)
    return PIN


@pytest.fixture
def labels() -> dict[str, str]:
    return SoftHsm.labels()


@pytest.fixture
def config(tmp_path: Path, softhsm: SoftHsm, labels: dict[str, str], pin: str) -> Path:
    return write_config(tmp_path, softhsm, labels)


def keys_of(config: Path) -> GatewayKeys:
    return GatewayKeys(load_settings(config), {PIN_ENV: PIN})


def test_init_makes_locked_keys_in_the_token_and_show_lists_them(
        config: Path, labels: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hsm", "init", "--config", str(config)]) == 0
    made = capsys.readouterr().out
    for name in ("audit", "hash", "fhe"):
        assert f"{name}: created {labels[name]}.v1" in made
    assert "sensitive, not extractable" in made
    session = pkcs11.lib(MODULE).get_token(token_label=TOKEN).open(user_pin=PIN)
    try:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=labels["audit"])
        assert key[Attribute.SENSITIVE]
        assert not key[Attribute.EXTRACTABLE]
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):  # it will not hand it out
            key[Attribute.VALUE]
    finally:
        session.close()
    assert main(["hsm", "show", "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert f"fhe: {labels['fhe']}.v1 (aes, sensitive, not extractable)  current" in shown
    assert f"audit: {labels['audit']}.v1 (hmac," in shown


def test_init_never_replaces_and_rotate_adds_a_version(
        config: Path, labels: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hsm", "init", "--config", str(config)]) == 0
    assert main(["hsm", "init", "--config", str(config)]) == 0
    assert f"audit: kept {labels['audit']}.v1" in capsys.readouterr().out
    assert main(["hsm", "rotate", "--config", str(config), "--secret", "audit"]) == 0
    rotated = capsys.readouterr().out
    assert f"audit: {labels['audit']}.v2 is current; {labels['audit']}.v1 kept" in rotated
    assert "hash" not in rotated  # only the secret asked for
    assert main(["hsm", "show", "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert f"{labels['audit']}.v1 (hmac, sensitive, not extractable)\n" in shown
    assert f"{labels['audit']}.v2 (hmac, sensitive, not extractable)  current" in shown
    assert main(["hsm", "rotate", "--config", str(config), "--secret", "vault"]) == 1
    assert "labels no HSM key for vault" in capsys.readouterr().err


def test_the_audit_chain_spans_a_rotation_and_verifies_with_the_token(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hsm", "init", "--config", str(config)]) == 0
    path = tmp_path / "audit.jsonl"
    with_v1 = keys_of(config)
    log = AuditLog(path, with_v1.audit())
    log.append({"n": 1})
    log.append({"n": 2})
    log.close()
    with_v1.close()
    assert main(["hsm", "rotate", "--config", str(config), "--secret", "audit"]) == 0
    with_v2 = keys_of(config)
    log = AuditLog(path, with_v2.audit())  # a restart: the chain goes on, under v2
    log.append({"n": 3})
    log.close()
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["kid"].rsplit(".", 1)[1] for r in records] == ["v1", "v1", "v2"]
    assert verify([path], with_v2.audit()).message == "3 records verified, last seq 2"
    with_v2.close()
    capsys.readouterr()
    assert main(["audit", "verify", "--config", str(config), str(path)]) == 0
    assert "ok: 3 records verified" in capsys.readouterr().out
    (tmp_path / "file.key").write_text("k" * 32)
    assert main(["audit", "verify", "--key-file", str(tmp_path / "file.key"), str(path)]) == 1
    assert "made under the HSM key" in capsys.readouterr().out
    edited = path.read_bytes().replace(b'"n":2', b'"n":9')
    path.write_bytes(edited)
    assert main(["audit", "verify", "--config", str(config), str(path)]) == 1
    assert "MAC mismatch" in capsys.readouterr().out


def test_ckks_keys_sealed_before_a_master_key_rotation_still_open(
        config: Path, tmp_path: Path) -> None:
    assert main(["hsm", "init", "--config", str(config), "--secret", "fhe"]) == 0
    assert main(["keys", "init", "--config", str(config)]) == 0  # sealed by the token
    first = (tmp_path / "fhe-keys" / "current").read_text().strip()
    assert main(["hsm", "rotate", "--config", str(config), "--secret", "fhe"]) == 0
    keys = keys_of(config)
    store = KeyStore(tmp_path / "fhe-keys", keys.fhe_master())
    second = store.rotate()  # sealed under the master key's v2
    assert store.load(first).key_id == first
    assert store.load(second).key_id == second
    keys.close()
    sealed = (tmp_path / "fhe-keys" / f"{first}.key").read_bytes()
    assert b"SEAL" not in sealed  # the CKKS key is never on disk in the clear


def test_a_removed_token_fails_closed_and_the_same_key_works_once_back(
        config: Path, softhsm: SoftHsm) -> None:
    assert main(["hsm", "init", "--config", str(config)]) == 0
    keys = keys_of(config)
    signer = keys.audit()
    assert isinstance(signer, TokenSigner)
    before = signer.sign(b"record")
    sealer = keys.fhe_master()
    assert isinstance(sealer, TokenSealer)
    with softhsm.unplugged():
        with pytest.raises(KeyUnavailable, match="could not compute an HMAC"):
            signer.sign(b"record")
        with pytest.raises(KeyUnavailable):
            sealer.encrypt(b"\0" * 12, b"x", b"")
        with pytest.raises(KeyUnavailable):  # still refused: never a key from elsewhere
            signer.sign(b"other record")
    assert signer.sign(b"record") == before  # back (module re-initialized): the same key
    keys.close()


def test_a_wrong_pin_refuses_to_start_at_the_pin_env_line(config: Path) -> None:
    with pytest.raises(ConfigError) as info:
        preflight(config, load_settings(config), {PIN_ENV: "not-the-pin"})
    assert f"config.yaml:{line_of(config, 'pin_env:')}" in str(info.value)
    assert f"the PIN in {PIN_ENV} is wrong" in str(info.value)
    with pytest.raises(TokenError, match="is wrong"):
        GatewayKeys(load_settings(config), {PIN_ENV: "not-the-pin"}).audit()


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize(("change", "message"), [
    ({"module": "/nonexistent/libpkcs11.so"}, "does not load as a PKCS#11 library"),
    ({"token_label": "no-such-token"}, "no PKCS#11 token 'no-such-token'"),
])
def test_a_missing_module_or_token_refuses_to_start_at_its_line(
        tmp_path: Path, softhsm: SoftHsm, labels: dict[str, str], pin: str, *,
        change: dict[str, str], message: str) -> None:
    config = write_config(tmp_path, softhsm, labels, hsm=softhsm.section(**change))
    with pytest.raises(ConfigError, match=message) as info:
        preflight(config, load_settings(config), {PIN_ENV: PIN})
    setting = next(iter(change))
    assert f"config.yaml:{line_of(config, setting + ':')}:" in str(info.value)


def test_a_label_the_token_lacks_is_named_at_its_line(config: Path) -> None:
    with pytest.raises(ConfigError) as info:
        preflight(config, load_settings(config), {PIN_ENV: PIN})
    text = str(info.value)
    assert f"config.yaml:{line_of(config, 'key_hsm_label')}" in text
    assert "run `veil hsm init`" in text


def test_a_key_of_the_wrong_kind_is_refused(config: Path, labels: dict[str, str]) -> None:
    keys = keys_of(config)
    keys.token().create(labels["audit"], "hmac")
    keys.token().create(labels["hash"], "hmac")
    keys.token().create(labels["fhe"], "hmac")  # the master key must be AES
    keys.close()
    with pytest.raises(ConfigError, match="is an hmac key; this secret needs an aes key"):
        preflight(config, load_settings(config), {PIN_ENV: PIN})


def test_one_secret_one_source_and_labels_need_the_hsm_section(
        tmp_path: Path, softhsm: SoftHsm, labels: dict[str, str]) -> None:
    config = write_config(tmp_path, softhsm, labels,
                          audit={"enabled": True, "key_env": "X", "key_hsm_label": "a"})
    with pytest.raises(ConfigError, match=r"audit.key_hsm_label: only one of key_env, "
                                          r"key_file, key_hsm_label \(also key_env\)"):
        load_settings(config)
    config = write_config(tmp_path, softhsm, labels, hsm=None)
    with pytest.raises(ConfigError, match="needs the hsm section"):
        load_settings(config)
    config = write_config(tmp_path, softhsm, labels)
    with pytest.raises(ConfigError, match=f"environment variable {PIN_ENV} must hold"):
        load_settings(config, {})
