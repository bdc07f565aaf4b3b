from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.harness import start_browser


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless chromium for the whole run (it takes a second to start); each test opens
    its own studio, and `fresh_browser` clears cookies between them."""
    driver = start_browser(tmp_path_factory.mktemp("chromium"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def fresh_browser(browser: WebDriver) -> WebDriver:
    browser.delete_all_cookies()
    return browser


@pytest.fixture
def studio_config(tmp_path: Path) -> Path:
    """A copy of a small gateway config with one policy, in its own folder."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nname: studio-test\n"
        "detectors:\n  builtin: [patterns]\n"
        "actions:\n  CREDIT_CARD: block\n  EMAIL: redact\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "backends:\n  - name: demo\n    url: http://127.0.0.1:9\n"
        "models:\n  demo-model: [demo]\n"
        "policies:\n  files: [policy.yaml]\n")
    return config
