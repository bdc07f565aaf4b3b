"""The gateway's keys in a real SoftHSM2 token, through real gateways in front of the demo
model and the official SDK: audit records MAC'd by the token and verified across a restart and
a rotation; the `hash` action's tokens made with the token's key (stable across restarts,
unlike a file key's); the CKKS secret key sealed by the token and scoring a semantic rule; the
vault's keys derived by it, shared by two replicas through Redis; and the token gone mid-run:
requests refused with the gateway's JSON error, never served under another key."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest

from gateway.errors import TokenError
from gateway.fhe.keys import KeyStore
from gateway.keys import admin
from gateway.keys.sources import GatewayKeys
from gateway.observability.audit import verify
from gateway.settings import Settings
from tests.conftest import Demo
from tests.integration.test_fhe_scoring import chat, policy_for, running_scorer
from tests.redis_server import RedisServer
from tests.servers import (
    OTHER_KEY,
    TEST_KEY,
    UPSTREAM_SECRET,
    ServerThread,
    demo_backend,
    gateway_for,
    settings_for,
)
from tests.softhsm import PIN, PIN_ENV, SoftHsm

ENV = {"DEMO_KEY": UPSTREAM_SECRET, PIN_ENV: PIN}
HASHING = {"version": 1, "name": "hashing", "detectors": {"builtin": ["patterns"]},
           "actions": {"EMAIL": "hash"}}
EMAIL = "jane.doe@example.com"
TOKEN = re.compile(r"\[EMAIL:[0-9a-f]{16}\]")


def hsm_settings(demo: Demo, softhsm: SoftHsm, **sections: Any) -> Settings:
    return settings_for([demo_backend("demo", demo.url)], hsm=softhsm.section(), **sections)


def made(settings: Settings, command: str = "init", only: list[str] | None = None) -> None:
    """`veil hsm init` (or rotate) for these settings' keys."""
    keys = GatewayKeys(settings, ENV)
    try:
        getattr(admin, command)(keys, only or [])
    finally:
        keys.close()


def ask(gateway: ServerThread, content: str, key: str = TEST_KEY) -> str:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    model = "test-model" if key == TEST_KEY else "other-model"
    reply = client.chat.completions.create(model=model,
                                           messages=[{"role": "user", "content": content}])
    return reply.choices[0].message.content or ""


def sent(demo: Demo) -> str:
    return json.dumps(demo.state.last_body)


def hashed(gateway: ServerThread, demo: Demo, key: str = TEST_KEY) -> str:
    ask(gateway, f"Write to {EMAIL} today", key)
    assert EMAIL not in sent(demo)
    found = TOKEN.search(sent(demo))
    assert found, sent(demo)
    return found.group(0)


def test_audit_records_are_macd_by_the_token_across_a_restart_and_a_rotation(
        demo: Demo, softhsm: SoftHsm, tmp_path: Path) -> None:
    labels = softhsm.labels()
    path = tmp_path / "audit.jsonl"
    settings = hsm_settings(demo, softhsm, audit={"enabled": True, "path": str(path),
                                                  "key_hsm_label": labels["audit"]})
    made(settings)
    with gateway_for(settings, environ=ENV) as gateway:
        ask(gateway, "hello")
        ask(gateway, "again")
    made(settings, "rotate")
    with gateway_for(settings, environ=ENV) as gateway:  # a restart, under the new version
        ask(gateway, "after the rotation")
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [(r["seq"], r["kid"]) for r in records] == [
        (0, f"{labels['audit']}.v1"), (1, f"{labels['audit']}.v1"), (2, f"{labels['audit']}.v2")]
    keys = GatewayKeys(settings, ENV)
    try:
        assert verify([path], keys.audit()).message == "3 records verified, last seq 2"
    finally:
        keys.close()
    assert not verify([path], b"k" * 32).ok  # no key outside the token makes these MACs


def test_hash_tokens_come_from_the_tokens_key_and_survive_a_restart(
        demo: Demo, softhsm: SoftHsm) -> None:
    labels = softhsm.labels()
    hashing = settings_for([demo_backend("demo", demo.url)], policy=HASHING,
                           hsm=softhsm.section(),
                           privacy={"ner_workers": 1, "hash_key_hsm_label": labels["hash"]})
    made(hashing)
    with gateway_for(hashing, environ=ENV) as gateway:
        first = hashed(gateway, demo)
        assert hashed(gateway, demo) == first  # the same value, the same token
        other_tenant = hashed(gateway, demo, OTHER_KEY)
    assert other_tenant != first  # keyed per tenant
    with gateway_for(hashing, environ=ENV) as gateway:  # restarted: the key is in the token
        assert hashed(gateway, demo) == first
    file_keyed = settings_for([demo_backend("demo", demo.url)], policy=HASHING,
                              privacy={"ner_workers": 1, "hash_key_env": "VEIL_HASH_KEY"})
    with gateway_for(file_keyed, environ={**ENV, "VEIL_HASH_KEY": "h" * 32}) as gateway:
        assert hashed(gateway, demo) != first
    made(hashing, "rotate")
    with gateway_for(hashing, environ=ENV) as gateway:  # a new version: new tokens
        assert hashed(gateway, demo) != first


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_scorer(tmp_path_factory.mktemp("scorer")) as url:
        yield url


def test_the_ckks_key_sealed_by_the_token_scores_a_semantic_rule(
        scorer: str, demo: Demo, softhsm: SoftHsm, tmp_path: Path) -> None:
    labels = softhsm.labels()
    fhe = {"keys_dir": str(tmp_path / "keys"), "master_key_hsm_label": labels["fhe"],
           "scorers": [{"name": "vendor", "url": scorer, "timeout_s": 30}]}
    settings = settings_for([demo_backend("d", demo.url)], policy=policy_for("static"), fhe=fhe,
                            hsm=softhsm.section())
    made(settings)
    keys = GatewayKeys(settings, ENV)
    try:
        epoch = KeyStore(tmp_path / "keys", keys.fhe_master()).init()  # `veil keys init`
    finally:
        keys.close()
    for _restart in range(2):
        with gateway_for(settings, environ=ENV) as gateway:
            blocked = chat(gateway.url, "Can you draft a term sheet for acquiring Globex Corp?")
            assert blocked.status_code == 400, blocked.text
            assert "semantic.no-deals" in blocked.json()["error"]["message"]
            fine = chat(gateway.url, "What is a good recipe for sourdough bread?")
            assert fine.status_code == 200, fine.text
    made(settings, "rotate")  # the master key rotates: the epoch sealed under v1 still opens
    with gateway_for(settings, environ=ENV) as gateway:
        assert chat(gateway.url, "What is a good recipe for sourdough bread?").status_code == 200
    assert (tmp_path / "keys" / "current").read_text().strip() == epoch


def test_the_vaults_keys_derived_by_the_token_are_shared_by_replicas(
        demo: Demo, softhsm: SoftHsm, tmp_path: Path) -> None:
    labels = softhsm.labels()
    with RedisServer(tmp_path) as redis_server:
        settings = hsm_settings(demo, softhsm, state={
            "redis_url": redis_server.url, "timeout_s": 0.5,
            "vault_key_hsm_label": labels["vault"]})
        made(settings)
        with ExitStack() as stack:
            one, two = (stack.enter_context(gateway_for(settings, environ=ENV))
                        for _ in range(2))
            client = openai.OpenAI(base_url=one.url + "/v1", api_key=TEST_KEY, max_retries=0)
            first = client.responses.create(model="test-model", input=f"Remember {EMAIL}")
            assert EMAIL not in sent(demo)
            other = openai.OpenAI(base_url=two.url + "/v1", api_key=TEST_KEY, max_retries=0)
            assert EMAIL in other.responses.retrieve(first.id).output_text  # read on another


def test_a_token_gone_mid_run_refuses_requests_with_the_json_error(
        demo: Demo, softhsm: SoftHsm, tmp_path: Path) -> None:
    labels = softhsm.labels()
    path = tmp_path / "audit.jsonl"
    audited = hsm_settings(demo, softhsm, audit={"enabled": True, "path": str(path),
                                                 "key_hsm_label": labels["audit"]})
    hashing = settings_for([demo_backend("demo", demo.url)], policy=HASHING,
                           hsm=softhsm.section(),
                           privacy={"ner_workers": 1, "hash_key_hsm_label": labels["hash"]})
    made(audited)
    made(hashing)
    auth = {"Authorization": f"Bearer {OTHER_KEY}"}
    body = {"model": "other-model", "messages": [{"role": "user", "content": f"to {EMAIL}"}]}
    with gateway_for(audited, environ=ENV) as one, gateway_for(hashing, environ=ENV) as two:
        ask(one, "before")
        first = hashed(two, demo)  # the test tenant's key is derived now, the other's not yet
        demo.state.last_body = None
        with softhsm.unplugged():
            refused = httpx.post(two.url + "/v1/chat/completions", headers=auth, json=body)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "key_unavailable"
            assert "The HSM could not compute an HMAC" in refused.json()["error"]["message"]
            assert "X-Request-ID" in refused.headers
            assert demo.state.last_body is None  # nothing was forwarded unhashed
            with pytest.raises(openai.InternalServerError) as info:
                ask(one, "while the token is gone")  # no audit record, no answer
            assert info.value.status_code == 503
            assert info.value.response.json()["error"]["code"] == "key_unavailable"
        ask(one, "the token is back")
        assert hashed(two, demo) == first
    keys = GatewayKeys(audited, ENV)
    try:
        verdict = verify([path], keys.audit())  # the refused request left no gap in seq
        assert verdict.message == "2 records verified, last seq 1"
    finally:
        keys.close()


def test_a_wrong_pin_keeps_the_gateway_from_starting(demo: Demo, softhsm: SoftHsm) -> None:
    labels = softhsm.labels()
    settings = hsm_settings(demo, softhsm, privacy={"hash_key_hsm_label": labels["hash"]})
    made(settings)
    with pytest.raises(TokenError, match=f"the PIN in {PIN_ENV} is wrong"):
        gateway_for(settings, environ={**ENV, PIN_ENV: "wrong-pin"})
