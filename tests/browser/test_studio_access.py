"""Who may use the studio: loopback without a token, anywhere else only with one; and no other
site's page may drive it (DNS rebinding, cross-site writes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from gateway.cli import main
from gateway.studio import cases_view
from gateway.studio.access import Access
from tests.browser.harness import studio_server, wait_for, wait_for_text

TOKEN = "studio-admin-token-0123456789"


def routable_address() -> str:
    """An address of this machine's that is not loopback, as an operator would bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the interface
        address = probe.getsockname()[0]
    assert not address.startswith("127."), "this machine has no non-loopback IPv4 address"
    return str(address)


def test_off_loopback_without_a_token_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="admin token"):
        Access.for_bind("0.0.0.0", None)
    with pytest.raises(ValueError, match="at least 16"):
        Access.for_bind("0.0.0.0", "short")
    assert Access.for_bind("127.0.0.1", None).token is None


def test_the_cli_refuses_a_public_bind_without_a_token(studio_config: Path) -> None:
    assert main(["studio", "--config", str(studio_config), "--host", "0.0.0.0"]) == 2


def test_bound_off_loopback_the_browser_must_sign_in(fresh_browser: WebDriver,
                                                     studio_config: Path) -> None:
    address = routable_address()
    with studio_server(studio_config, host=address, token=TOKEN) as studio:
        fresh_browser.get(studio.url() + "/")
        wait_for(fresh_browser, "#token")  # sent to the login form, not the studio
        assert "#playground" not in fresh_browser.current_url
        fresh_browser.find_element("css selector", "#token").send_keys("wrong-token-0123456789")
        fresh_browser.find_element("css selector", "#sign-in").click()
        wait_for(fresh_browser, "#token")
        assert "failed=1" in fresh_browser.current_url
        fresh_browser.find_element("css selector", "#token").send_keys(TOKEN)
        fresh_browser.find_element("css selector", "#sign-in").click()
        wait_for_text(fresh_browser, "#tabs", "Playground")
        cookie = fresh_browser.get_cookie("veil_studio_session")
        assert cookie is not None
        assert cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"
        assert TOKEN not in cookie["value"]


def test_bound_off_loopback_the_api_needs_the_token(studio_config: Path) -> None:
    address = routable_address()
    with studio_server(studio_config, host=address, token=TOKEN) as studio:
        base = studio.url()
        for path in ("/", "/api/nothing", "/static/studio.js"):
            refused = httpx.get(base + path, follow_redirects=False)
            assert refused.status_code in (302, 401), path
        api = httpx.get(base + "/api/nothing")
        assert api.status_code == 401
        assert api.json()["error"]["code"] == "unauthorized"
        wrong = httpx.get(base + "/static/studio.js",
                          headers={"Authorization": "Bearer " + "x" * len(TOKEN)})
        assert wrong.status_code == 302
        right = httpx.get(base + "/static/studio.js", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200
        assert "default-src 'self'" in right.headers["Content-Security-Policy"]


def test_on_loopback_no_token_but_only_loopback_host_names(studio_config: Path) -> None:
    with studio_server(studio_config) as studio:
        base = studio.url()
        assert httpx.get(base + "/").status_code == 200
        rebound = httpx.get(base + "/", headers={"Host": f"attacker.example:{studio.port}"})
        assert rebound.status_code == 421  # a rebound DNS name reaches the port, not the studio


def test_writes_must_be_same_origin_json(studio_config: Path) -> None:
    with studio_server(studio_config) as studio:
        base = studio.url()
        form = httpx.post(base + "/api/anything", data={"x": "1"})
        assert form.status_code == 403
        assert form.json()["error"]["message"] == "write requests must be JSON"
        cross = httpx.post(base + "/api/anything", json={},
                           headers={"Origin": "http://attacker.example"})
        assert cross.status_code == 403
        assert cross.json()["error"]["message"] == "cross-origin request"


def test_a_view_that_fails_still_answers_json(studio_config: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a view is a JSON 500 that names a request id, not aiohttp's text page."""
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a prompt that must not be echoed")

    monkeypatch.setattr(cases_view, "cases_file_for", broken)
    with studio_server(studio_config) as studio:
        answer = httpx.get(studio.url() + "/api/cases/files")
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"
    assert "request id" in answer.json()["error"]["message"]
    assert "must not be echoed" not in answer.text


def test_the_studio_logs_through_the_gateways_redaction_at_debug(studio_config: Path) -> None:
    """`veil studio` logs as `veil serve` does: JSON through the redacting processors, so even
    at debug a prompt tried in the playground never reaches its log."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "studio", "--config", str(studio_config),
         "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "VEIL__LOGGING__LEVEL": "debug"})
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(base + "/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        answer = httpx.post(base + "/api/playground/analyze", timeout=30, json={
            "policy": "policy.yaml", "prompt": "mail jane.roe@example.org now"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["texts"][0]["masked"] == "mail [REDACTED:EMAIL] now"
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert "jane.roe@example.org" not in out + err
    assert '"level":' in err  # the gateway's JSON lines, not an unconfigured logger
