"""The README's picture of the playground, taken by hand:

    .venv/bin/python -m tests.browser.screenshot docs/studio-playground.png

The demo config (`config.yaml`, `policies/default.yaml`: patterns, NER and the gazetteer) in
the studio, in headless chromium, with a realistic prompt analyzed. NER's worker takes a few
seconds to start the first time.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.browser.harness import start_browser, studio_server, wait_for, wait_for_text
from tests.browser.playground_fixtures import analyze

ROOT = Path(__file__).parents[2]
WIDTH = 1400
PROMPT = ("Hi, this is Maria Garcia from the Seattle office. Please refund the duplicate charge "
          "on my card 4111 1111 1111 1111 and send the receipt to maria.garcia@example.com, "
          "or call me on +1 415 555 0134.")
NER_START_S = 180.0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        browser = start_browser(Path(profile))
        try:
            with studio_server(ROOT / "config.yaml") as studio:
                browser.set_window_size(WIDTH, 1000)
                browser.get(studio.url() + "/#playground")
                wait_for_text(browser, "#policy option", "default")
                wait_for_text(browser, "#editor-status", "saved")
                browser.find_element("css selector", "#prompt").send_keys(PROMPT)
                analyze(browser, NER_START_S)
                wait_for(browser, "mark.finding[data-entity=PERSON]")
                height = browser.execute_script("return document.documentElement.scrollHeight")
                browser.set_window_size(WIDTH, int(height) + 140)  # the window's own frame
                browser.execute_script("document.activeElement.blur();"
                                       "document.documentElement.style.overflow = 'hidden'")
                browser.save_screenshot(str(out))
        finally:
            browser.quit()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
