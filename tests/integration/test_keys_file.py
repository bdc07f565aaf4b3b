"""API keys in a file of their own, shared by several gateways: a key added works on all of
them without a restart, a revoked one stops working on all, a broken edit changes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx2 as httpx
import pytest
import yaml

from gateway.demo.upstream import build_demo_app
from gateway.errors import ConfigError
from gateway.ingress.auth import hash_api_key, new_api_key
from gateway.ingress.keys_file import load_keys
from gateway.settings import TenantSettings
from tests.servers import ServerThread, backend, gateway_for, settings_for

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


def write_keys(path: Path, keys: dict[str, str]) -> None:
    """`keys`: name -> the key itself (only its digest is written)."""
    path.write_text(yaml.safe_dump({"api_keys": [
        {"name": name, "tenant": "test", "hash": hash_api_key(key)}
        for name, key in keys.items()]}))


@contextmanager
def gateways(keys_file: Path, count: int) -> Iterator[list[ServerThread]]:
    with ExitStack() as stack:
        up = stack.enter_context(ServerThread(build_demo_app()))
        settings = settings_for([backend("up", up.url)], {"test-model": ["up"]},
                                api_keys_file=str(keys_file), api_keys_watch_interval_s=0.1)
        yield [stack.enter_context(gateway_for(settings)) for _ in range(count)]


def status(gw: ServerThread, key: str) -> int:
    return httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10,
                      headers={"Authorization": f"Bearer {key}"}).status_code


def eventually(check: Callable[[], bool], seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_keys_are_added_and_revoked_on_every_gateway_without_restart(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    alice, bob = new_api_key(), new_api_key()
    write_keys(keys_file, {"alice": alice})
    with gateways(keys_file, 2) as gws:
        assert [status(g, alice) for g in gws] == [200, 200]
        assert [status(g, bob) for g in gws] == [401, 401]
        write_keys(keys_file, {"alice": alice, "bob": bob})
        assert all(eventually(lambda g=g: status(g, bob) == 200) for g in gws)
        write_keys(keys_file, {"bob": bob})  # alice revoked
        assert all(eventually(lambda g=g: status(g, alice) == 401) for g in gws)
        assert [status(g, bob) for g in gws] == [200, 200]


def test_a_broken_edit_keeps_the_keys_in_force(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    keys_file = tmp_path / "keys.yaml"
    alice = new_api_key()
    write_keys(keys_file, {"alice": alice})
    with gateways(keys_file, 1) as (gw,):
        keys_file.write_text("api_keys:\n  - {name: x, tenant: nobody, hash: 'sha256:"
                             + "0" * 64 + "'}\n")
        assert eventually(lambda: "api_keys_reload_failed" in capsys.readouterr().err)
        assert status(gw, alice) == 200


def test_a_keys_file_that_does_not_load_names_file_and_line(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("api_keys:\n  - {name: a, tenant: test, hash: 'sha256:" + "1" * 64 +
                         "'}\n  - {name: b, tenant: ghost, hash: 'sha256:" + "2" * 64 + "'}\n")
    with pytest.raises(ConfigError) as info:
        load_keys(keys_file, {"test": TenantSettings()}, [])
    assert [str(i) for i in info.value.issues] == [
        f"{keys_file}:3:23: api_keys[1].tenant: unknown tenant 'ghost'"]
