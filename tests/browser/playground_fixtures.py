"""Configs for the playground's tests: one policy that extends a base, pattern detectors only
(answers in milliseconds), optionally with signed policies and the key pair that signs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from gateway.policy import signing
from tests.browser.harness import WAIT_S

BASE = """\
version: 1
name: base
detectors:
  builtin: [patterns]
default_action: pseudonymize
actions:
  SECRET: redact
"""

POLICY = """\
version: 1
name: playground-test
extends: base.yaml
actions:
  CREDIT_CARD: block
  EMAIL: pseudonymize
data_classes:
  personal: {entities: [EMAIL, PHONE]}
"""


def write_config(folder: Path, *, signed: bool = False) -> Path:
    (folder / "base.yaml").write_text(BASE)
    (folder / "policy.yaml").write_text(POLICY)
    (folder / "elsewhere.yaml").write_text(BASE.replace("name: base", "name: elsewhere"))
    policies = "policies:\n  files: [policy.yaml]\n"
    if signed:
        signing.generate(folder / "signing.key", folder / "signing.pub")
        signing.generate(folder / "other.key", folder / "other.pub")
        for name in ("base.yaml", "policy.yaml"):
            signing.sign(folder / name, folder / "signing.key")
        policies += "  require_signed_policies: true\n  public_key_file: signing.pub\n"
    config = folder / "config.yaml"
    config.write_text("backends:\n  - name: demo\n    url: http://127.0.0.1:9\n"
                      "models:\n  demo-model: [demo]\n" + policies)
    return config


@pytest.fixture
def playground_config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def signed_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, signed=True)


def set_value(browser: WebDriver, css: str, value: str) -> None:
    """As if pasted: chromedriver types only the Basic Multilingual Plane (no emoji)."""
    browser.execute_script(
        "const box = document.querySelector(arguments[0]); box.value = arguments[1];"
        "box.dispatchEvent(new Event('input'));", css, value)


def analyze(browser: WebDriver, timeout: float = WAIT_S) -> None:
    """Click Analyze and wait for its answer to be shown (the view counts them)."""
    def count(driver: WebDriver) -> int:
        view = driver.find_element("css selector", "#view-playground")
        return int(view.get_attribute("data-analyses") or 0)
    before = count(browser)
    browser.find_element("css selector", "#analyze").click()
    WebDriverWait(browser, timeout).until(lambda b: count(b) > before)
