"""The audit view on a real gateway run: the official SDK sends masked, blocked and plain
requests from two tenants through a real gateway with its audit trail on; the studio, started
on the same config, shows the chain verified, filters it, draws it, shows no prompt text, and
names the seq where an edited line breaks the chain."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import yaml
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from gateway.demo.upstream import build_demo_app
from gateway.observability.audit import AuditLog
from tests.browser.harness import studio_server, wait_for_text
from tests.servers import (
    OTHER_KEY,
    TEST_KEY,
    UPSTREAM_SECRET,
    ServerThread,
    demo_backend,
    gateway_for,
    settings_for,
)

CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"
AUDIT_KEY = "audit-key-for-the-studio-test-0123456789"
POLICY = {"version": 1, "name": "audited", "detectors": {"builtin": ["patterns"]},
          "actions": {"CREDIT_CARD": "block", "EMAIL": "pseudonymize"},
          "data_classes": {"contact": {"entities": ["EMAIL"]},
                           "payment": {"entities": ["CREDIT_CARD"]}}}
BLOCK_RULE = "actions.CREDIT_CARD=block"
TIMES = "\N{MULTIPLICATION SIGN}"  # between an entity type and its count


@dataclass
class Run:
    config: Path
    audit: Path
    records: int


def studio_config(folder: Path, audit: dict[str, object]) -> Path:
    """The gateway config the studio opens: the policy and the audit trail, by relative path."""
    (folder / "policy.yaml").write_text(yaml.safe_dump(POLICY, sort_keys=False))
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({
        "backends": [{"name": "demo-openai", "url": "http://127.0.0.1:9"}],
        "models": {"test-model": ["demo-openai"]},
        "policies": {"files": ["policy.yaml"]}, "audit": audit}))
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Six requests through a real gateway: tenant `test` sends two with an email (masked),
    one with a card (blocked) and one plain; tenant `limited` one plain, one with an email."""
    folder = tmp_path_factory.mktemp("audited")
    (folder / "audit.key").write_text(AUDIT_KEY)
    audit = {"enabled": True, "path": str(folder / "audit.jsonl"),
             "key_file": str(folder / "audit.key")}
    with ServerThread(build_demo_app(required_key=UPSTREAM_SECRET)) as demo:
        settings = settings_for([demo_backend("demo-openai", demo.url)], policy=POLICY,
                                audit=audit)
        with gateway_for(settings) as gateway:
            send = {key: openai.OpenAI(base_url=gateway.url + "/v1", api_key=key,
                                       max_retries=0) for key in (TEST_KEY, OTHER_KEY)}
            for key, model, prompt in [
                (TEST_KEY, "test-model", f"Write to {EMAIL} about the invoice"),
                (TEST_KEY, "test-model", f"Forward this to {EMAIL}, please"),
                (TEST_KEY, "test-model", "What is the capital of France?"),
                (OTHER_KEY, "other-model", "Summarise our meeting"),
                (OTHER_KEY, "other-model", f"Invite {EMAIL} to the meeting"),
            ]:
                send[key].chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}])
            with pytest.raises(openai.APIStatusError) as blocked:
                send[TEST_KEY].chat.completions.create(
                    model="test-model",
                    messages=[{"role": "user", "content": f"Charge my card {CARD}"}])
            assert blocked.value.status_code == 400
    lines = (folder / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 6
    config = studio_config(folder, {"enabled": True, "path": "audit.jsonl",
                                    "key_file": "audit.key"})
    return Run(config, folder / "audit.jsonl", len(lines))


def rows(browser: WebDriver) -> list[list[str]]:
    """The table's cells, read in one go (the view may be redrawing it)."""
    return browser.execute_script(  # type: ignore[no-any-return]
        "return [...document.querySelectorAll('#audit-rows tr[data-seq]')]"
        ".map((tr) => [...tr.cells].map((td) => td.textContent))")


def wait_for_rows(browser: WebDriver, count: int) -> list[list[str]]:
    WebDriverWait(browser, 20).until(lambda b: len(rows(b)) == count)
    return rows(browser)


COLUMN = {"tenant": 2, "outcome": 6, "rule": 7, "data_classes": 8, "entities": 9}


def test_the_audit_of_a_real_gateway_run_verifies_filters_and_shows_no_value(
        fresh_browser: WebDriver, run: Run) -> None:
    browser = fresh_browser
    with studio_server(run.config) as studio:
        browser.get(studio.url() + "/#audit")
        banner = wait_for_text(browser, "#audit-chain", "Chain verified")
        assert banner.text.endswith(f"Chain verified: {run.records} records")
        assert "ok" in banner.get_attribute("class").split()
        everything = wait_for_rows(browser, run.records)
        assert sorted(r[COLUMN["tenant"]] for r in everything) == ["limited"] * 2 + ["test"] * 4
        blocked = [r for r in everything if r[COLUMN["outcome"]] == "blocked"]
        assert [(r[COLUMN["rule"]], r[COLUMN["data_classes"]], r[COLUMN["entities"]])
                for r in blocked] == [(BLOCK_RULE, "payment", f"CREDIT_CARD {TIMES}1")]
        wait_for_text(browser, "#audit-chart-blocks", BLOCK_RULE)
        assert len(browser.find_elements("css selector", "#audit-chart-requests rect.bar")) >= 1
        assert browser.find_elements("css selector", "#audit-chart-entities polyline")

        Select(browser.find_element("css selector", "#audit-tenant")).select_by_value("limited")
        limited = wait_for_rows(browser, 2)
        assert {r[COLUMN["tenant"]] for r in limited} == {"limited"}
        wait_for_text(browser, "#audit-chart-blocks", "No blocked requests")
        wait_for_text(browser, "#audit-matched", "2 matching")

        Select(browser.find_element("css selector", "#audit-tenant")).select_by_value("")
        wait_for_rows(browser, run.records)
        Select(browser.find_element("css selector", "#audit-rule")).select_by_value(BLOCK_RULE)
        only = wait_for_rows(browser, 1)
        assert only[0][COLUMN["outcome"]] == "blocked"
        assert browser.find_elements("css selector", "#audit-chart-requests rect.bar-blocked")
        assert not browser.find_elements("css selector",
                                         "#audit-chart-requests rect.bar-forwarded")
        Select(browser.find_element("css selector", "#audit-rule")).select_by_value("")
        Select(browser.find_element("css selector", "#audit-data-class")
               ).select_by_value("contact")
        contact = wait_for_rows(browser, 3)
        assert {r[COLUMN["entities"]] for r in contact} == {f"EMAIL {TIMES}1"}

        page = browser.page_source
        for value in (CARD, CARD.replace(" ", ""), EMAIL, "capital of France", "invoice"):
            assert value not in page


def test_an_edited_line_shows_the_chain_broken_at_its_seq(fresh_browser: WebDriver,
                                                          run: Run, tmp_path: Path) -> None:
    lines = run.audit.read_text().splitlines()
    edited = tmp_path / "audit.jsonl"
    (tmp_path / "audit.key").write_text(AUDIT_KEY)
    assert '"tenant":"limited"' in lines[3]
    lines[3] = lines[3].replace('"tenant":"limited"', '"tenant":"renamed"')
    edited.write_text("\n".join(lines) + "\n")
    config = studio_config(tmp_path, {"enabled": True, "path": "audit.jsonl",
                                      "key_file": "audit.key"})
    with studio_server(config) as studio:
        fresh_browser.get(studio.url() + "/#audit")
        banner = wait_for_text(fresh_browser, "#audit-chain", "Chain broken")
        assert "Chain broken at seq 3 (audit.jsonl line 4): MAC mismatch" in banner.text
        assert "bad" in banner.get_attribute("class").split()
        assert "Chain verified" not in fresh_browser.page_source
        wait_for_rows(fresh_browser, run.records)  # still listed, under a broken banner
        marked = fresh_browser.find_elements("css selector", "#audit-rows tr.audit-broken")
        assert [tr.get_attribute("data-seq") for tr in marked] == ["3"]

        # The page verifies again when asked: a line cut from the middle is a break too.
        edited.write_text("\n".join([*run.audit.read_text().splitlines()[:2],
                                     *run.audit.read_text().splitlines()[3:]]) + "\n")
        fresh_browser.find_element("css selector", "#audit-verify").click()
        wait_for_text(fresh_browser, "#audit-chain", "Chain broken at seq 2 (audit.jsonl line 3)")


def test_without_a_key_the_chain_is_never_called_verified(fresh_browser: WebDriver,
                                                          run: Run, tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").write_bytes(run.audit.read_bytes())
    config = studio_config(tmp_path, {"enabled": False, "path": "audit.jsonl"})
    with studio_server(config) as studio:
        fresh_browser.get(studio.url() + "/#audit")
        banner = wait_for_text(fresh_browser, "#audit-chain", "cannot be verified")
        assert "names no audit key" in banner.text
        assert "bad" in banner.get_attribute("class").split()
        wait_for_rows(fresh_browser, run.records)
        answer = httpx.get(studio.url() + "/api/audit/verify")
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "audit_key_unavailable"


def test_hostile_names_in_records_render_as_text(fresh_browser: WebDriver,
                                                 tmp_path: Path) -> None:
    """Tenant, rule and entity names reach the page from the file: none may become markup."""
    (tmp_path / "audit.key").write_text(AUDIT_KEY)
    log = AuditLog(tmp_path / "audit.jsonl", AUDIT_KEY.encode())
    hostile = '<img src=x onerror="window.pwned=1">'
    log.append({"tenant": hostile, "rule": "<script>window.pwned=1</script>",
                "decision": "blocked", "data_classes": ['"><svg onload=window.pwned=1>'],
                "entities": {"<b>BOLD</b>": 2}, "backend": "</td><td>x"})
    log.close()
    config = studio_config(tmp_path, {"enabled": True, "path": "audit.jsonl",
                                      "key_file": "audit.key"})
    with studio_server(config) as studio:
        fresh_browser.get(studio.url() + "/#audit")
        wait_for_text(fresh_browser, "#audit-chain", "Chain verified: 1 records")
        [row] = wait_for_rows(fresh_browser, 1)
        assert row[COLUMN["tenant"]] == hostile
        assert row[COLUMN["entities"]] == f"<b>BOLD</b> {TIMES}2"
        wait_for_text(fresh_browser, "#audit-chart-blocks", "<script>")
        view = fresh_browser.find_element("css selector", "#view-audit")
        for tag in ("img", "script", "b", "svg svg"):
            assert not view.find_elements("css selector", f"#audit-rows {tag}")
        assert fresh_browser.execute_script("return window.pwned") is None
        Select(fresh_browser.find_element("css selector", "#audit-tenant")
               ).select_by_value(hostile)
        wait_for_rows(fresh_browser, 1)


def test_the_api_refuses_bad_queries_as_json(run: Run) -> None:
    with studio_server(run.config) as studio:
        for path, param in [("/api/audit/records?tennant=test", "tennant"),
                            ("/api/audit/records?limit=100000", "limit"),
                            ("/api/audit/records?cursor=../../etc/passwd", "cursor"),
                            ("/api/audit/summary?since=yesterday", "since"),
                            ("/api/audit/summary?bucket=second", "bucket"),
                            ("/api/audit/verify?file=/etc/passwd", "file"),
                            ("/api/audit/records?tenant=a&tenant=b", "tenant")]:
            answer = httpx.get(studio.url() + path)
            assert answer.status_code == 400, path
            error = answer.json()["error"]
            assert (error["code"], error["type"], error["param"]) == (
                "invalid_parameter", "invalid_parameter", param)
        listed = httpx.get(studio.url() + "/api/audit/records?limit=4").json()
        assert len(listed["records"]) == 4
        rest = httpx.get(studio.url() + "/api/audit/records",
                         params={"limit": 4, "cursor": listed["next_cursor"]}).json()
        assert len(rest["records"]) == run.records - 4
        assert rest["next_cursor"] is None
        seqs = [r["seq"] for r in listed["records"] + rest["records"]]
        assert sorted(seqs) == list(range(run.records))


def test_older_records_page_in_and_a_time_range_narrows_them(fresh_browser: WebDriver,
                                                             tmp_path: Path) -> None:
    (tmp_path / "audit.key").write_text(AUDIT_KEY)
    log = AuditLog(tmp_path / "audit.jsonl", AUDIT_KEY.encode())
    for n in range(60):
        log.append({"tenant": "acme", "decision": "forwarded", "rule": "default",
                    "request_id": f"r{n}"})
    log.close()
    last = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])["time"]
    after_all = datetime.fromisoformat(last) + timedelta(seconds=1)
    config = studio_config(tmp_path, {"enabled": True, "path": "audit.jsonl",
                                      "key_file": "audit.key"})
    with studio_server(config) as studio:
        browser = fresh_browser
        browser.get(studio.url() + "/#audit")
        wait_for_text(browser, "#audit-chain", "Chain verified: 60 records")
        first = wait_for_rows(browser, 50)
        assert first[0][1] == "59"
        browser.find_element("css selector", "#audit-more").click()
        everything = wait_for_rows(browser, 60)
        assert [int(r[1]) for r in everything] == list(range(59, -1, -1))
        assert not browser.find_element("css selector", "#audit-more").is_displayed()

        def set_input(css: str, value: str) -> None:
            browser.execute_script(
                "const input = document.querySelector(arguments[0]); input.value = arguments[1];"
                "input.dispatchEvent(new Event('change'))", css, value)

        set_input("#audit-since", after_all.strftime("%Y-%m-%dT%H:%M:%S"))
        wait_for_text(browser, "#audit-rows", "No records match")
        wait_for_text(browser, "#audit-chart-requests", "No requests")
        set_input("#audit-since", "2000-01-01T00:00:00")
        wait_for_rows(browser, 50)
        browser.find_element("css selector", "#audit-reset").click()
        wait_for_rows(browser, 50)
