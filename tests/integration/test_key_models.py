"""Per-key model allow-lists, with the official openai SDK: a key narrows its tenant's models
(in config.yaml and in the keys file alike); a model outside is answered exactly like one that
does not exist, and /v1/models lists only what the key may use. A key can never widen them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import openai
import pytest
import yaml

from gateway.demo.upstream import build_demo_app
from gateway.errors import ConfigError
from gateway.ingress.auth import hash_api_key
from gateway.ingress.keys_file import load_keys
from gateway.settings import Settings, TenantSettings
from tests.servers import TEST_KEY, ServerThread, backend, gateway_for, settings_for

NARROW_KEY = "veil-test-key-narrowed-in-config"
FILE_KEY = "veil-test-key-narrowed-in-keys-file"
MODELS = ["test-model", "other-model", "third-model"]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[ServerThread]:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"api_keys": [
        {"name": "file-key", "tenant": "test", "hash": hash_api_key(FILE_KEY),
         "models": ["test-model"]}]}))
    with ExitStack() as stack:
        up = stack.enter_context(ServerThread(build_demo_app()))
        settings = settings_for(
            [backend("up", up.url)], {m: ["up"] for m in MODELS},
            tenants={"test": {"models": ["*"]}, "two": {"models": ["test-model", "other-model"]}},
            api_keys=[{"name": "test-key", "tenant": "test", "hash": hash_api_key(TEST_KEY)},
                      {"name": "narrow", "tenant": "two", "hash": hash_api_key(NARROW_KEY),
                       "models": ["other-model"]}],
            api_keys_file=str(keys_file))
        yield stack.enter_context(gateway_for(settings))


def client(gw: ServerThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def refusal(gw: ServerThread, key: str, model: str) -> object:
    with pytest.raises(openai.NotFoundError) as refused:
        client(gw, key).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}])
    body = refused.value.body
    assert isinstance(body, dict)
    return {k: v for k, v in body.items() if k != "request_id"}


@pytest.mark.parametrize(("key", "allowed", "outside"), [
    (NARROW_KEY, "other-model", "test-model"),  # config.yaml: narrower than its tenant
    (FILE_KEY, "test-model", "third-model"),  # the keys file
])
def test_a_key_uses_only_its_models(gateway: ServerThread, key: str, allowed: str,
                                    outside: str) -> None:
    sdk = client(gateway, key)
    assert [m.id for m in sdk.models.list()] == [allowed]
    reply = sdk.chat.completions.create(model=allowed,
                                        messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    outside_refusal = refusal(gateway, key, outside)
    assert outside_refusal == refusal(gateway, key, "no-such-model")  # not disclosed
    assert outside_refusal["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(outside)
    assert sdk.models.retrieve(allowed).id == allowed


def test_keys_without_a_list_keep_their_tenants_models(gateway: ServerThread) -> None:
    assert sorted(m.id for m in client(gateway, TEST_KEY).models.list()) == sorted(MODELS)


def test_a_key_cannot_widen_its_tenants_models(tmp_path: Path) -> None:
    base = settings_for([backend("up", "http://127.0.0.1:1")], {m: ["up"] for m in MODELS})
    data = base.model_dump()
    data["api_keys"] = [{"name": "wide", "tenant": "limited", "hash": hash_api_key("x"),
                         "models": ["other-model", "test-model"]}]
    with pytest.raises(ValueError, match=r"'wide' lists models its tenant may not use: "
                                         r"\['test-model'\]"):
        Settings.model_validate(data)

    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("api_keys:\n  - {name: w, tenant: limited, hash: 'sha256:" + "1" * 64
                         + "', models: [test-model]}\n")
    with pytest.raises(ConfigError) as info:
        load_keys(keys_file, {"limited": TenantSettings(models=["other-model"])}, [])
    assert [str(i) for i in info.value.issues] == [
        f"{keys_file}:2:121: api_keys[0].models: lists models its tenant may not use: "
        "['test-model']"]
