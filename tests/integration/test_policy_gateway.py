"""Policies in the running gateway: the digest on every answer, decisions that refuse, fail
modes, and hot reload while traffic flows."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml

from gateway.app import GATEWAY
from gateway.demo.upstream import build_demo_app
from tests.conftest import Demo
from tests.servers import (
    TEST_KEY,
    TEST_POLICY,
    UPSTREAM_SECRET,
    ServerThread,
    demo_backend,
    gateway_for,
    settings_for,
)

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
EMAIL = "jane.roe@example.com"


def chat(url: str, content: str, **extra: Any) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=30, json={
        "model": "test-model", "messages": [{"role": "user", "content": content}], **extra})


def policy(**fields: Any) -> dict[str, Any]:
    return {**TEST_POLICY, **fields}


def digest_of(gw: ServerThread) -> str:
    return gw.app[GATEWAY].policies.current.policies[0].digest


def reload(gw: ServerThread) -> bool:
    return gw.call(gw.app[GATEWAY].policies.reload("test"))


def policy_path(gw: ServerThread) -> Path:
    return Path(gw.app[GATEWAY].settings.policies.files[0])


def test_every_answer_names_the_policy(demo: Demo) -> None:
    with gateway_for(settings_for([demo_backend("d", demo.url)])) as gw:
        digest = digest_of(gw)
        assert chat(gw.url, "hi").headers["X-Veil-Policy"] == digest
        with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=AUTH, json={
                "model": "test-model", "stream": True,
                "messages": [{"role": "user", "content": f"mail {EMAIL}"}]}) as r:
            assert r.headers["X-Veil-Policy"] == digest
            assert EMAIL in r.read().decode()  # restored in the stream


def test_routing_block_refuses_with_the_rule(demo: Demo) -> None:
    rules = policy(data_classes={"secret": {"entities": ["SECRET"]}},
                   routing={"secret": {"block": True}})
    with gateway_for(settings_for([demo_backend("d", demo.url)], policy=rules)) as gw:
        r = chat(gw.url, "key AKIAIOSFODNN7EXAMPLE")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "sensitive_data_blocked"
    assert "routing.secret.block" in r.json()["error"]["message"]
    assert "AKIA" not in r.text
    assert demo.state.last_body is None


def test_data_needing_a_trust_level_is_not_sent_to_unattested_backends(demo: Demo) -> None:
    rules = policy(data_classes={"personal": {"entities": ["EMAIL"]}},
                   routing={"personal": {"require": "confidential-gpu"}},
                   trust_levels={"confidential-gpu": {"sev-snp": {"measurements": ["ab" * 48]}}})
    with gateway_for(settings_for([demo_backend("d", demo.url)], policy=rules)) as gw:
        refused = chat(gw.url, f"mail {EMAIL}")
        plain = chat(gw.url, "no personal data here")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "no_attested_backend"
    assert "confidential-gpu" in refused.json()["error"]["message"]
    assert plain.status_code == 200
    assert EMAIL not in str(demo.state.last_body)


def test_no_applicable_policy_is_403(demo: Demo) -> None:
    rules = policy(applies_to={"tenants": ["someone-else"]})
    with gateway_for(settings_for([demo_backend("d", demo.url)], policy=rules)) as gw:
        r = chat(gw.url, "hello")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "no_policy"
    assert demo.state.last_body is None


@pytest.mark.parametrize(("mode", "status"), [("closed", 503), ("open", 200)])
def test_detector_fail_mode(demo: Demo, mode: str, status: int) -> None:
    rules = policy(detectors={"builtin": ["patterns"],
                              "plugins": ["tests.unit.test_plugins:Raising"]},
                   fail_mode={"detector": mode})
    with gateway_for(settings_for([demo_backend("d", demo.url)], policy=rules)) as gw:
        r = chat(gw.url, f"mail {EMAIL}")
        metrics = httpx.get(gw.url + "/metrics").text
    assert r.status_code == status
    if mode == "closed":
        assert r.json()["error"]["code"] == "detector_failed"
        assert demo.state.last_body is None
    else:  # forwarded as the policy explicitly allows, and counted
        assert 'veil_failed_open_total{dependency="detector"} 1.0' in metrics


def test_request_in_flight_keeps_its_policy() -> None:
    """A slow stream starts under one policy; a reload mid-stream does not change how it ends."""
    with ServerThread(build_demo_app(chunk_delay_ms=40, required_key=UPSTREAM_SECRET)) as up, \
            gateway_for(settings_for([demo_backend("d", up.url)])) as gw:
        old = digest_of(gw)
        with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=AUTH, json={
                "model": "test-model", "stream": True,
                "messages": [{"role": "user", "content": f"mail {EMAIL} " + "word " * 30}]}) as r:
            lines = r.iter_lines()
            next(lines)
            policy_path(gw).write_text(yaml.safe_dump(policy(actions={"EMAIL": "redact"})))
            assert reload(gw)
            rest = "".join(lines)
        assert r.headers["X-Veil-Policy"] == old
        assert EMAIL in rest  # the old policy pseudonymized it, so the old vault restored it
        after = chat(gw.url, f"mail {EMAIL}")
        assert after.headers["X-Veil-Policy"] == digest_of(gw) != old
        assert "[REDACTED:EMAIL]" in after.text


def test_hot_reload_under_load(demo: Demo) -> None:
    """Clients keep sending while the policy flips between two versions and a broken edit:
    every request succeeds, each under one of the two valid versions, never the broken one."""
    unlimited = {"requests_per_second": 1e6, "burst": 1_000_000}
    with gateway_for(settings_for([demo_backend("d", demo.url)],
                                  default_rate_limit=unlimited)) as gw:
        path = policy_path(gw)
        versions = [yaml.safe_dump(policy(actions={"EMAIL": action}))
                    for action in ("pseudonymize", "redact")]
        valid: set[str] = {digest_of(gw)}
        stop = threading.Event()
        results: list[tuple[int, str]] = []

        def client() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    r = c.post(gw.url + "/v1/chat/completions", headers=AUTH, json={
                        "model": "test-model",
                        "messages": [{"role": "user", "content": f"mail {EMAIL}"}]})
                    results.append((r.status_code, r.headers.get("X-Veil-Policy", "")))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            while len(results) < 5:
                time.sleep(0.01)
            for i in range(12):
                time.sleep(0.1)  # traffic between every swap
                if i % 3 == 2:
                    path.write_text("version: 1\nname: test\nactions: {EMAIL: redcat}\n")
                    before = digest_of(gw)
                    assert not reload(gw)
                    assert digest_of(gw) == before  # a broken file changes nothing
                else:
                    path.write_text(versions[i % 2])
                    assert reload(gw)
                    valid.add(digest_of(gw))
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        metrics = httpx.get(gw.url + "/metrics").text
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: len(results)}, statuses
    assert len(results) > 20
    assert {digest for _, digest in results} <= valid
    assert len({digest for _, digest in results}) >= 2  # traffic really crossed reloads
    assert 'veil_policy_reloads_total{result="error"} 4.0' in metrics
    assert 'veil_policy_reloads_total{result="ok"} 8.0' in metrics


def test_evidence_fail_open_forwards_when_the_policy_says_so(demo: Demo) -> None:
    rules = policy(data_classes={"personal": {"entities": ["EMAIL"]}},
                   routing={"personal": {"require": "confidential-gpu"}},
                   trust_levels={"confidential-gpu": {"sev-snp": {"measurements": ["ab" * 48]}}},
                   fail_mode={"evidence": "open"})
    with gateway_for(settings_for([demo_backend("d", demo.url)], policy=rules)) as gw:
        r = chat(gw.url, f"mail {EMAIL}")
        metrics = httpx.get(gw.url + "/metrics").text
    assert r.status_code == 200
    assert EMAIL not in str(demo.state.last_body)  # still masked: only the routing failed open
    assert 'veil_failed_open_total{dependency="evidence"} 1.0' in metrics
