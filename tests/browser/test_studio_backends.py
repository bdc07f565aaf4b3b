"""The Backends view: the studio attests the config's backends with the gateway's own verifier
(real TLS on loopback, the test AMD's SEV-SNP evidence) and shows, per backend, the verdict per
trust level with its expiry, why a level is not met or an attestation failed, what was
measured, and "Re-attest now"; a backend without attestation is shown as such. Through the API
(what it answers, what it refuses, that nothing secret is in it) and in headless chromium."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.attestation_ca import MEASUREMENT
from tests.browser.backends_fixtures import (
    LEVEL,
    SECRET_ENV,
    SECRET_HEADER,
    SECRET_VALUE,
    TDX_LEVEL,
    URL_PASSWORD,
    Backends,
    three_backends,
)
from tests.browser.harness import WAIT_S, StudioServer, studio_server, wait_for, wait_for_text


@pytest.fixture
def backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backends]:
    monkeypatch.setenv(SECRET_ENV, SECRET_VALUE)
    with three_backends(tmp_path) as world:
        yield world


@pytest.fixture
def studio(backends: Backends) -> Iterator[StudioServer]:
    with studio_server(backends.config) as server:
        yield server


def listed(studio: StudioServer) -> dict[str, Any]:
    response = httpx.get(studio.url() + "/api/backends", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {backend["name"]: backend for backend in body["backends"]}


def attested_once(studio: StudioServer) -> dict[str, dict[str, Any]]:
    """The backends once both attested ones have been attested (whatever the outcome)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        backends = by_name(listed(studio))
        if all(backends[name]["verdict"]["checked_at"] for name in ("good", "wrong")):
            return backends
        assert time.monotonic() < deadline, "the studio never attested its backends"
        time.sleep(0.05)


def level(backend: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [lv for lv in backend["verdict"]["levels"] if lv["level"] == name]
    return found


def reattest(studio: StudioServer, name: str) -> httpx.Response:
    return httpx.post(studio.url() + "/api/backends/attest", json={"backend": name}, timeout=60)


def test_the_api_gives_each_backends_verdict_per_level(studio: StudioServer) -> None:
    backends = attested_once(studio)
    good, wrong, plain = backends["good"], backends["wrong"], backends["plain"]

    assert good["status"] == "attested"
    assert good["verdict"]["error"] is None
    cpu = level(good, LEVEL)
    assert cpu["met"] is True
    assert cpu["policy"] == "test"
    checked = good["verdict"]["checked_at"]
    assert cpu["until"] == pytest.approx(checked + 600, abs=5)  # the level's max_age_s
    assert good["verdict"]["next_check_at"] == pytest.approx(checked + 300, abs=1)  # refresh_s
    tdx = level(good, TDX_LEVEL)
    assert tdx["met"] is False
    assert tdx["problems"] == ["tdx: the evidence has no TDX quote"]
    measured = good["verdict"]["measured"]
    assert measured["kinds"] == ["SEV-SNP"]
    assert measured["sev_snp"]["measurement"] == MEASUREMENT.hex()
    assert measured["sev_snp"]["debug"] is False
    assert len(measured["report_data"]) == 128  # 64 bytes: the nonce and the TLS key, bound
    assert measured["gpu_count"] == 0

    assert wrong["status"] == "unmet"  # the evidence verifies; its measurement is not allowed
    assert level(wrong, LEVEL)["met"] is False
    assert level(wrong, LEVEL)["problems"] == [f"measurement {bytes(48).hex()} is not allowed"]

    assert plain["status"] == "not-attested"
    assert plain["attestation"] is None
    assert plain["verdict"] is None


def test_a_failed_attestation_shows_the_gateways_reason(studio: StudioServer,
                                                       backends: Backends) -> None:
    attested_once(studio)
    backends.machines["wrong"].replay = True  # a report made for another nonce
    refused = reattest(studio, "wrong")
    assert refused.status_code == 200, refused.text
    body = refused.json()
    assert body["status"] == "refused"
    assert body["verdict"]["measured"] is None
    assert "report_data is not bound to this nonce and TLS key" in body["verdict"]["error"]
    assert all(lv["met"] is False for lv in body["verdict"]["levels"])


def test_re_attest_now_asks_the_backend_afresh(studio: StudioServer, backends: Backends) -> None:
    before = attested_once(studio)["good"]["verdict"]["checked_at"]
    asked = len(backends.machines["good"].nonces)
    response = reattest(studio, "good")
    assert response.status_code == 200, response.text
    assert len(backends.machines["good"].nonces) == asked + 1  # a fresh nonce, asked now
    after = response.json()
    assert after["verdict"]["checked_at"] > before
    assert level(after, LEVEL)["met"] is True


def test_re_attest_judges_by_the_policies_as_they_are_now(studio: StudioServer,
                                                          backends: Backends) -> None:
    """A level edited since the studio started counts at the next Re-attest now; a policy
    that stops loading is shown, and the last set that loaded stays in force, as in a gateway."""
    attested_once(studio)
    policy_file = backends.config.parent / "policy.yaml"
    edited = yaml.safe_load(policy_file.read_text())
    edited["trust_levels"][LEVEL]["sev-snp"]["measurements"] = [bytes(48).hex()]
    policy_file.write_text(yaml.safe_dump(edited))
    wrong = reattest(studio, "wrong").json()
    assert wrong["status"] == "attested"
    assert level(wrong, LEVEL)["met"] is True
    good = by_name(listed(studio))["good"]  # re-evaluated at once, like a gateway's reload
    assert level(good, LEVEL)["met"] is False
    assert level(good, LEVEL)["problems"] == [f"measurement {MEASUREMENT.hex()} is not allowed"]

    policy_file.write_text("version: 1\nname: [broken\n")
    assert level(reattest(studio, "wrong").json(), LEVEL)["met"] is True
    body = listed(studio)
    assert body["policy_error"] is not None
    assert "policy.yaml" in body["policy_error"]
    assert [p["name"] for p in body["policies"]] == ["test"]


def test_re_attest_refuses_what_it_cannot_attest(studio: StudioServer) -> None:
    unknown = reattest(studio, "nowhere")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    plain = reattest(studio, "plain")
    assert plain.status_code == 409
    assert plain.json()["error"]["code"] == "not_attested"
    for body in ({}, {"backend": 3}, ["good"]):
        malformed = httpx.post(studio.url() + "/api/backends/attest", json=body)
        assert malformed.status_code == 400, body


def test_nothing_secret_is_shown(studio: StudioServer) -> None:
    attested_once(studio)
    text = httpx.get(studio.url() + "/api/backends").text
    for secret in (SECRET_VALUE, SECRET_ENV, SECRET_HEADER, URL_PASSWORD, "PRIVATE KEY",
                   "eyJ"):  # "eyJ": how every JWT starts
        assert secret not in text
    plain = by_name(listed(studio))["plain"]
    assert plain["url"] == "http://127.0.0.1:9/v1"
    assert set(plain) == {"name", "url", "format", "attestation", "status", "verdict"}


def test_the_backends_view_in_the_browser(fresh_browser: WebDriver, studio: StudioServer,
                                          backends: Backends) -> None:
    attested_once(studio)
    browser = fresh_browser
    browser.get(studio.url() + "/#backends")

    wait_for_text(browser, "#backend-good .verdict.ok", "attested")
    met = wait_for(browser, f'#backend-good .level[data-level="{LEVEL}"]')
    assert "met" in met.find_element("css selector", ".state").text
    expires = met.find_element("css selector", ".expires")
    assert "Z" in expires.text  # the absolute time (UTC)
    assert "in 9m" in expires.text or "in 10m" in expires.text  # and the countdown
    not_met = browser.find_element("css selector",
                                   f'#backend-good .level[data-level="{TDX_LEVEL}"]')
    assert "the evidence has no TDX quote" in not_met.text
    assert "null" not in browser.find_element("css selector", "#backend-good").text
    measured = browser.find_element("css selector", "#backend-good .measured")
    assert "SEV-SNP" in measured.text
    assert MEASUREMENT.hex() in measured.text

    wait_for_text(browser, "#backend-wrong .verdict.bad", "refused")
    assert "is not allowed" in browser.find_element(
        "css selector", f'#backend-wrong .level[data-level="{LEVEL}"] .problems').text

    wait_for_text(browser, "#backend-plain .verdict.muted", "no attestation")
    assert browser.find_elements("css selector", "#backend-plain .reattest") == []
    assert "Not attested" in browser.find_element("css selector", "#backend-plain").text

    # Re-attest now: the last attestation's time moves (shown to the second: wait for the next)
    checked = browser.find_element("css selector", "#backend-good .checked-at")
    before, shown = checked.get_attribute("data-at"), checked.text
    time.sleep(max(0.0, math.floor(float(before or 0)) + 1.05 - time.time()))
    browser.find_element("css selector", "#backend-good .reattest").click()
    after = redrawn_text(browser, "#backend-good .checked-at", lambda text: text != shown)
    assert after.endswith("ago)")  # counted since then
    assert redrawn_text(browser, "#backend-good .verdict", "attested".__eq__)

    # A backend whose attestation fails now: refused, with the verifier's reason
    backends.machines["wrong"].replay = True
    browser.find_element("css selector", "#backend-wrong .reattest").click()
    assert "report_data is not bound" in redrawn_text(
        browser, "#backend-wrong .reason", lambda text: "not bound" in text)
    assert redrawn_text(browser, "#backend-wrong .verdict.bad", "refused".__eq__)


def redrawn_text(browser: WebDriver, css: str, wanted: Callable[[str], bool]) -> str:
    """The text of the first element matching `css` once `wanted` says yes: a card is redrawn
    whole when its backend changes, so an element read meanwhile may have gone stale."""
    def text(driver: WebDriver) -> str | bool:
        found = driver.find_elements("css selector", css)
        return found[0].text if found and wanted(found[0].text) else False
    return str(WebDriverWait(browser, WAIT_S, ignored_exceptions=(
        StaleElementReferenceException,)).until(text))


def test_policies_that_do_not_load_are_shown(fresh_browser: WebDriver,
                                             backends: Backends) -> None:
    """The studio starts with a broken policy (it is where one fixes it): the view says so,
    and the evidence is still verified, with no trust level to meet."""
    (backends.config.parent / "policy.yaml").write_text("version: 1\nname: [broken\n")
    with studio_server(backends.config) as studio:
        good = attested_once(studio)["good"]
        assert good["status"] == "verified"
        assert good["verdict"]["levels"] == []
        fresh_browser.get(studio.url() + "/#backends")
        shown = wait_for_text(fresh_browser, "#backends-policy-error", "do not load")
        assert "policy.yaml" in shown.text
        wait_for_text(fresh_browser, "#backend-good .verdict.ok", "no trust level in force")
        wait_for_text(fresh_browser, "#backend-good .levels-none", "No policy in force")
