"""The playground in headless chromium: type a prompt and see what the gateway would find,
decide and send; break the policy and see where; fix it and save it (signed when the config
says so); and nothing typed ever becomes markup."""

from __future__ import annotations

from pathlib import Path

from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from gateway.policy import signing
from tests.browser.harness import WAIT_S, studio_server, wait_for, wait_for_text
from tests.browser.playground_fixtures import (
    POLICY,
    analyze,
    playground_config,
    set_value,
    signed_config,
)

__all__ = ["playground_config", "signed_config"]  # fixtures, used by name


def open_playground(browser: WebDriver, url: str) -> None:
    browser.get(url + "/#playground")
    wait_for_text(browser, "#policy option", "playground-test")
    wait_for_text(browser, "#editor-status", "saved")


def marks(browser: WebDriver) -> list[tuple[str, str]]:
    return [(m.get_attribute("data-entity") or "", m.text) for m in
            browser.find_elements("css selector", "#highlighted mark.finding")]


def test_a_typed_prompt_is_highlighted_by_entity_and_masked(fresh_browser: WebDriver,
                                                            playground_config: Path) -> None:
    browser = fresh_browser
    with studio_server(playground_config) as studio:
        open_playground(browser, studio.url())
        prompt = "Mail ann.lee@example.com or call +44 20 7946 0958 today"
        browser.find_element("css selector", "#prompt").send_keys(prompt)
        analyze(browser)
        email = wait_for(browser, "mark.finding[data-entity=EMAIL]")
        assert email.text == "ann.lee@example.com"
        assert "patterns" in (email.get_attribute("title") or "")
        assert marks(browser) == [("EMAIL", "ann.lee@example.com"), ("PHONE", "+44 20 7946 0958")]
        wait_for_text(browser, "#masked", "<EMAIL_1>")
        assert browser.find_element("css selector", "#masked").text == \
            "Mail <EMAIL_1> or call <PHONE_1> today"
        assert browser.find_element("css selector", "#outcome").text.lower() == "forward"
        assert browser.find_element("css selector", "#rule").text == "default"
        assert browser.find_element("css selector", "#reply-restored").text == \
            "You wrote:\n" + prompt
        rows = browser.find_elements("css selector", "#findings tr")
        assert [r.get_attribute("data-entity") for r in rows] == ["EMAIL", "PHONE"]
        shared = browser.execute_script("return veil.shared.playground")
        assert shared["policy"] == "policy.yaml"
        assert shared["prompt"] == prompt

        set_value(browser, "#prompt", "card 4111 1111 1111 1111")
        analyze(browser)
        wait_for_text(browser, "#outcome", "BLOCK")
        assert browser.find_element("css selector", "#rule").text == "actions.CREDIT_CARD=block"
        assert "blocked" in browser.find_element("css selector", "#masked").text


def test_highlights_land_on_the_right_text_after_emoji(fresh_browser: WebDriver,
                                                       playground_config: Path) -> None:
    browser = fresh_browser
    with studio_server(playground_config) as studio:
        open_playground(browser, studio.url())
        set_value(browser, "#prompt", "🙂🎉 \U0001d49c wrote from bo@example.org 👍 and a@b.co")
        analyze(browser)
        wait_for(browser, "mark.finding[data-entity=EMAIL]")
        assert marks(browser) == [("EMAIL", "bo@example.org"), ("EMAIL", "a@b.co")]
        body = browser.find_element("css selector", "#highlighted .pg-body").text
        assert body.startswith("🙂🎉 \U0001d49c wrote from ")


def test_a_whole_chat_is_read_as_the_gateway_reads_it(fresh_browser: WebDriver,
                                                      playground_config: Path) -> None:
    browser = fresh_browser
    with studio_server(playground_config) as studio:
        open_playground(browser, studio.url())
        browser.find_element("css selector", "#mode-chat").click()
        set_value(browser, "#prompt", '{"model": "m", "user": "ops@example.com", "messages": ['
                  '{"role": "system", "content": "Escalate to desk@example.com"},'
                  '{"role": "user", "content": "I am ann@example.com"}]}')
        analyze(browser)
        wait_for_text(browser, "#masked", '"content": "I am <EMAIL_')
        assert len(browser.find_elements("css selector", "#highlighted .pg-text")) == 3
        assert len(marks(browser)) == 3
        assert "ann@example.com" not in browser.find_element("css selector", "#masked").text

        set_value(browser, "#prompt", "{not json")
        analyze(browser)
        wait_for_text(browser, "#analyze-error", "not valid JSON")


def test_a_broken_policy_shows_the_error_at_its_line_then_the_fix_is_saved(
        fresh_browser: WebDriver, playground_config: Path) -> None:
    browser = fresh_browser
    file = playground_config.parent / "policy.yaml"
    with studio_server(playground_config) as studio:
        open_playground(browser, studio.url())
        editor = browser.find_element("css selector", "#policy-editor")
        editor.click()
        editor.send_keys(Keys.CONTROL, Keys.END)
        editor.send_keys("bogus: 1")
        error = wait_for_text(browser, "#policy-errors li", "policy.yaml:9:1")
        assert "unknown key" in error.text
        line = wait_for(browser, "#policy-gutter .line.error")
        assert line.get_attribute("data-line") == "9"
        assert line.text == "9"
        assert not browser.find_element("css selector", "#save").is_enabled()
        assert file.read_text() == POLICY  # nothing saved unless asked

        editor.send_keys(Keys.BACKSPACE * len("bogus: 1"))
        editor.send_keys("unknown_fields: refuse")
        wait_for_text(browser, "#editor-status", "edited, valid")
        assert not browser.find_elements("css selector", "#policy-gutter .line.error")
        assert not browser.find_elements("css selector", "#policy-errors li")
        assert file.read_text() == POLICY
        browser.find_element("css selector", "#save").click()
        wait_for_text(browser, "#save-status", "saved policy.yaml")
        assert file.read_text() == POLICY + "unknown_fields: refuse"
        wait_for_text(browser, "#editor-status", "saved")


def test_an_edit_is_analyzed_as_a_draft_before_it_is_saved(fresh_browser: WebDriver,
                                                           playground_config: Path) -> None:
    browser = fresh_browser
    with studio_server(playground_config) as studio:
        open_playground(browser, studio.url())
        set_value(browser, "#policy-editor", POLICY.replace("EMAIL: pseudonymize", "EMAIL: block"))
        browser.find_element("css selector", "#prompt").send_keys("mail ann@example.com")
        analyze(browser)
        wait_for_text(browser, "#rule", "actions.EMAIL=block")
        assert "unsaved draft" in browser.find_element("css selector", "#decision").text
        assert (playground_config.parent / "policy.yaml").read_text() == POLICY


def test_signed_policies_save_with_the_right_key_only(fresh_browser: WebDriver,
                                                      signed_config: Path) -> None:
    browser = fresh_browser
    folder = signed_config.parent
    file, sig = folder / "policy.yaml", folder / "policy.yaml.sig"
    before = sig.read_text()
    with studio_server(signed_config) as studio:
        open_playground(browser, studio.url())
        key = wait_for(browser, "#signing-key")
        editor = browser.find_element("css selector", "#policy-editor")
        editor.click()
        editor.send_keys(Keys.CONTROL, Keys.END)
        editor.send_keys("unknown_fields: refuse")
        wait_for_text(browser, "#editor-status", "edited, valid")

        key.send_keys(str(folder / "other.key"))
        browser.find_element("css selector", "#save").click()
        wait_for_text(browser, "#save-status", "not saved")
        assert "not the one" in browser.find_element("css selector", "#save-status").text
        assert (file.read_text(), sig.read_text()) == (POLICY, before)

        key.clear()
        key.send_keys(str(folder / "signing.key"))
        WebDriverWait(browser, WAIT_S).until(
            lambda b: b.find_element("css selector", "#save").is_enabled())
        browser.find_element("css selector", "#save").click()
        wait_for_text(browser, "#save-status", "(signed)")
        assert file.read_text() == POLICY + "unknown_fields: refuse"
        signing.verify_file(file, signing.load_public_key(folder / "signing.pub"))


def test_markup_in_a_prompt_or_a_policy_is_shown_as_text(fresh_browser: WebDriver,
                                                         playground_config: Path) -> None:
    browser = fresh_browser
    with studio_server(playground_config) as studio:
        open_playground(browser, studio.url())
        attack = ('<img src=x onerror="window.pwned=1"> ann@example.com '
                  "<script>window.pwned=2</script>")
        set_value(browser, "#prompt", attack)
        analyze(browser)
        wait_for(browser, "mark.finding[data-entity=EMAIL]")
        body = browser.find_element("css selector", "#highlighted .pg-body").text
        assert body == attack
        assert '<img src=x onerror="window.pwned=1">' in \
            browser.find_element("css selector", "#masked").text
        set_value(browser, "#policy-editor", POLICY + '"<img src=x onerror=window.pwned=3>": 1\n')
        wait_for_text(browser, "#policy-errors li", "<img src=x onerror=window.pwned=3>")
        view = browser.find_element("css selector", "#view-playground")
        assert not view.find_elements("css selector", "img, script")
        assert browser.execute_script("return window.pwned === undefined")
