"""Custody: the secret key exists sealed at rest, opens only with the master key, rotates; what
leaves for the scorer is evaluation keys, never the secret key."""

from __future__ import annotations

from pathlib import Path

import pytest
import tenseal.sealapi as seal

from gateway.errors import CustodyError
from gateway.fhe.keys import KeyStore
from gateway.fhe.seal import load, new_context, to_bytes


def test_init_rotate_show(store: KeyStore) -> None:
    first = store.init()
    with pytest.raises(CustodyError, match="already exist"):
        store.init()
    second = store.rotate()
    assert second != first
    assert store.current_id() == second
    shown = {entry["key_id"]: entry["current"] for entry in store.show()}
    assert shown == {first: "false", second: "true"}
    assert store.load(first).key_id == first  # older epochs stay readable


def test_sealed_at_rest(store: KeyStore, tmp_path: Path) -> None:
    key_id = store.init()
    keys = store.load()
    secret = to_bytes(keys.secret)
    sealed = (tmp_path / "keys" / f"{key_id}.key").read_bytes()
    assert secret[64:128] not in sealed
    assert oct((tmp_path / "keys" / f"{key_id}.key").stat().st_mode)[-3:] == "600"


def test_wrong_master_key_and_tampering(store: KeyStore, tmp_path: Path) -> None:
    key_id = store.init()
    with pytest.raises(CustodyError, match="does not open"):
        KeyStore(tmp_path / "keys", bytes(32)).load()
    path = tmp_path / "keys" / f"{key_id}.key"
    sealed = bytearray(path.read_bytes())
    sealed[40] ^= 1
    path.write_bytes(bytes(sealed))
    with pytest.raises(CustodyError, match="does not open"):
        store.load()


def test_master_key_sources(tmp_path: Path) -> None:
    hex_key = "ab" * 32
    assert KeyStore.open(str(tmp_path), "K", None, {"K": hex_key})
    (tmp_path / "master").write_text(hex_key + "\n")
    assert KeyStore.open(str(tmp_path), None, str(tmp_path / "master"), {})
    with pytest.raises(CustodyError, match="32 bytes"):
        KeyStore.open(str(tmp_path), "K", None, {"K": "short"})
    with pytest.raises(CustodyError, match="required"):
        KeyStore.open(str(tmp_path), None, None, {})
    with pytest.raises(CustodyError, match="no FHE key"):
        KeyStore(tmp_path / "empty", bytes(32)).load()


def test_evaluation_keys_hold_no_secret(store: KeyStore) -> None:
    store.init()
    keys = store.load()
    shared = keys.galois_keys([1, 2, 4])
    assert to_bytes(keys.secret)[64:128] not in shared
    galois = seal.GaloisKeys()
    load(galois, new_context(), shared)  # they are what they claim to be
    with pytest.raises((ValueError, RuntimeError)):
        load(seal.SecretKey(), new_context(), shared)


def test_serve_refuses_to_start_without_an_openable_key(tmp_path: Path) -> None:
    from gateway.cli import main  # noqa: PLC0415
    from gateway.errors import ConfigError  # noqa: PLC0415
    from gateway.preflight import preflight  # noqa: PLC0415
    from gateway.settings import load_settings  # noqa: PLC0415

    (tmp_path / "policy.yaml").write_text("version: 1\nname: p\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"""
fhe:
  keys_dir: "{tmp_path / 'keys'}"
  master_key_file: "{tmp_path / 'missing.key'}"
  scorers: [{{name: s, url: "http://127.0.0.1:9"}}]
policies: {{files: ["{tmp_path / 'policy.yaml'}"]}}
backends: []
models: {{}}
""")
    settings = load_settings(config, {})  # parses and validates only: no key is read
    with pytest.raises(ConfigError, match=r"config.yaml:\d+:\d+: fhe: cannot read the FHE"):
        preflight(config, settings, {})
    (tmp_path / "missing.key").write_text("cd" * 32)
    with pytest.raises(ConfigError, match="run `veil keys init`"):
        preflight(config, settings, {})
    # `veil keys init` with this very config: the command the error asks for must work
    assert main(["keys", "init", "--config", str(config)]) == 0
    assert preflight(config, settings, {}).policies


def test_unsealed_key_material_never_touches_a_filesystem() -> None:
    """SEAL's bindings read and write paths: on Linux those are anonymous memfds."""
    from gateway.fhe.seal import _scratch_file  # noqa: PLC0415

    with _scratch_file(b"secret" * 1000) as path:
        assert str(path).startswith("/proc/self/fd/")
        assert path.read_bytes() == b"secret" * 1000
