"""/metrics as a scraper sees it: detector failures counted by detector and reason, build
info, process figures, no `_created` series, and the optional bearer token."""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from gateway import __version__
from gateway.errors import ConfigError
from gateway.settings import load_settings
from tests.conftest import Demo
from tests.servers import (
    TEST_KEY,
    TEST_POLICY,
    UPSTREAM_SECRET,
    demo_backend,
    gateway_for,
    settings_for,
)

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
METRICS_TOKEN = "metrics-token-0123456789abcdef"
BIG = "a plain sentence with nothing in it. " * 600  # past INLINE_CHARS: detected in a thread


class Slow:
    """A plugin that takes longer than the policy's time limit."""

    name = "slow"
    entities = frozenset({"X"})

    def detect(self, text: str) -> list[object]:
        time.sleep(1.0)
        return []


def chat(url: str, content: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=30, json={
        "model": "test-model", "messages": [{"role": "user", "content": content}]})


def failures(page: str) -> dict[tuple[str, str], float]:
    return {(d, r): float(v) for d, r, v in re.findall(
        r'veil_detector_failures_total\{detector="([^"]*)",reason="([^"]*)"\} (\S+)', page)}


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_a_raising_plugin_is_counted_by_reference_and_reason(demo: Demo, mode: str) -> None:
    plugin = "tests.unit.test_plugins:Raising"
    policy: dict[str, Any] = {**TEST_POLICY, "fail_mode": {"detector": mode},
                              "detectors": {"builtin": ["patterns"], "plugins": [plugin]}}
    with gateway_for(settings_for([demo_backend("d", demo.url)], policy=policy)) as gw:
        assert chat(gw.url, "secret words").status_code == (503 if mode == "closed" else 200)
        chat(gw.url, "other words")
        page = httpx.get(gw.url + "/metrics").text
    assert failures(page) == {(plugin, "error"): 2.0}
    assert "secret words" not in page
    assert "boom" not in page


def test_a_time_limit_counts_the_detector_still_running(demo: Demo) -> None:
    plugin = "tests.integration.test_metrics_page:Slow"
    policy = {**TEST_POLICY, "detectors": {"builtin": ["patterns"], "plugins": [plugin],
                                           "time_limit_s": 0.2}}
    with gateway_for(settings_for([demo_backend("d", demo.url)], policy=policy)) as gw:
        r = chat(gw.url, BIG)
        page = httpx.get(gw.url + "/metrics").text
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "detection_timeout"
    assert failures(page) == {(plugin, "timeout"): 1.0}  # patterns had finished: not counted


def test_page_has_build_info_and_process_figures_and_no_created(demo: Demo) -> None:
    with gateway_for(settings_for([demo_backend("d", demo.url)])) as gw:
        chat(gw.url, "hello")
        page = httpx.get(gw.url + "/metrics").text
    build = f'veil_build_info{{python="{platform.python_version()}",version="{__version__}"}} 1.0'
    assert build in page.splitlines()
    assert __version__ != "0+unknown"  # read from the installed package's metadata
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds"):
        value = re.search(rf"^{name} (\S+)$", page, re.MULTILINE)
        assert value is not None, name
        assert float(value.group(1)) > 0
    assert "_created" not in page


def test_metrics_token_is_required_when_configured(demo: Demo) -> None:
    settings = settings_for([demo_backend("d", demo.url)],
                            metrics={"token_env": "VEIL_METRICS_TOKEN"})
    environ = {"DEMO_KEY": UPSTREAM_SECRET, "VEIL_METRICS_TOKEN": METRICS_TOKEN}
    with gateway_for(settings, environ) as gw:
        refused = [httpx.get(gw.url + "/metrics", headers=headers) for headers in (
            {}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN},
            {"Authorization": f"Bearer {METRICS_TOKEN}x"}, AUTH)]
        allowed = httpx.get(gw.url + "/metrics",
                            headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        health = httpx.get(gw.url + "/healthz")
    for r in refused:
        assert r.status_code == 401
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_metrics_token")
        assert error["request_id"] == r.headers["X-Request-ID"]
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert "veil_" not in r.text
    assert allowed.status_code == 200
    assert "veil_requests_total" in allowed.text
    assert health.status_code == 200  # only /metrics is behind the token


def test_metrics_token_variable_must_be_set(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("backends: [{name: d, url: 'http://127.0.0.1:9'}]\nmodels: {m: [d]}\n"
                      "policies: {files: [p.yaml]}\nmetrics: {token_env: VEIL_METRICS_TOKEN}\n")
    with pytest.raises(ConfigError, match="VEIL_METRICS_TOKEN must hold at least 16"):
        load_settings(config, environ={})
    with pytest.raises(ConfigError, match="VEIL_METRICS_TOKEN must hold at least 16"):
        load_settings(config, environ={"VEIL_METRICS_TOKEN": "short"})
    assert load_settings(config, environ={"VEIL_METRICS_TOKEN": METRICS_TOKEN}).metrics \
        .token_env == "VEIL_METRICS_TOKEN"
