"""The studio in a real headless browser: Debian's chromium driven by its chromedriver through
Selenium (`make test` installs both). Nothing is downloaded: the driver is named, so Selenium
Manager never runs, and chromium starts with its background networking off (this machine's
closed network would refuse those connections)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from gateway.settings import load_settings
from gateway.studio.access import Access
from gateway.studio.context import Studio
from gateway.studio.server import build_studio_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--window-size=1400,1000")
WAIT_S = 20.0
REDRAWN = (StaleElementReferenceException,)  # the views redraw: a found element may go stale


def start_browser(user_data_dir: Path) -> WebDriver:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:  # fail, never skip: `make test` installs them
        raise RuntimeError(f"{', '.join(missing)} missing: apt-get install chromium "
                           "chromium-driver (make test does)")
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


class StudioServer:
    """`veil studio` for one config, on its own thread and event loop, at `host`."""

    def __init__(self, config: Path, *, host: str = "127.0.0.1", token: str | None = None
                 ) -> None:
        self.studio = Studio(config, load_settings(config))
        self.access = Access.for_bind(host, token)
        self.host = host
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner = web.AppRunner(build_studio_app(self.studio, self.access))

    def url(self, host: str | None = None) -> str:
        name = host or self.host
        return f"http://{f'[{name}]' if ':' in name else name}:{self.port}"

    def __enter__(self) -> StudioServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextmanager
def studio_server(config: Path, **options: str | None) -> Iterator[StudioServer]:
    with StudioServer(config, **options) as server:  # type: ignore[arg-type]
        yield server


def wait_for(browser: WebDriver, css: str, timeout: float = WAIT_S) -> WebElement:
    """The first element matching `css` once it is displayed."""
    def shown(driver: WebDriver) -> WebElement | bool:
        found = driver.find_elements("css selector", css)
        return found[0] if found and found[0].is_displayed() else False
    return WebDriverWait(browser, timeout, ignored_exceptions=REDRAWN).until(shown)  # type: ignore[no-any-return]


def wait_for_text(browser: WebDriver, css: str, text: str, timeout: float = WAIT_S) -> WebElement:
    """The first element matching `css` whose text contains `text`."""
    def has_text(driver: WebDriver) -> WebElement | bool:
        for element in driver.find_elements("css selector", css):
            if text in element.text:
                return element
        return False
    return WebDriverWait(browser, timeout, ignored_exceptions=REDRAWN).until(has_text)  # type: ignore[no-any-return]
