"""The admin page in Debian's chromium (headless, offline): a dead letter retried from the
page once its PACS is back, and a configuration change checked, read and applied through it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from router.service import wait_for
from testing.browser import headless_chromium
from testing.router_process import StartRouter
from testing.storescp import running_storescp
from tests.router.admin_page.support import get, send_ct, start_admin_router

DOCS_SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "img" / "admin.png"


@pytest.mark.timeout(300)
def test_retry_and_config_change_through_the_page(
    start_router: StartRouter, tmp_path: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    router, pacs_port = start_admin_router(start_router)
    study = send_ct(router, tmp_path / "a", "Chest 1mm")
    send_ct(router, tmp_path / "b", "CRASH me")
    assert wait_for(lambda: get(router, "/api/admin/overview")["dead_letters"]["dispatches"], 30)
    base = f"http://127.0.0.1:{router.http_port}"

    with (
        running_storescp(tmp_path / "pacs", port=pacs_port) as pacs,
        headless_chromium(tmp_path / "profile", offline=True, window_size=(1400, 1800)) as browser,
    ):
        wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
        browser.get(f"{base}/admin")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#dead-dispatches tr[data-item]"))
        overview = browser.find_element(By.ID, "overview").text
        assert "Results not delivered to PACS: 1" in overview
        assert "Failed runs: 1" in overview
        studies = browser.find_element(By.ID, "study-table").text
        assert "chest-ct" in studies and "crash-test" in studies
        algorithms = browser.find_element(By.ID, "algorithm-table").text
        assert "100.0 %" in algorithms and "0.0 %" in algorithms  # crashing; always_negative

        # "Why": the rule-by-rule explanation of the crash series.
        browser.find_element(By.CSS_SELECTOR, "#study-table button.why").click()
        wait.until(
            lambda b: "rule 'crash-test': matched" in b.find_element(By.ID, "explanation-text").text
        )

        # The PACS is back: retry the dead dispatch from the page.
        browser.find_element(By.CSS_SELECTOR, "#dead-dispatches button.retry").click()
        wait.until(
            lambda b: "Requeued dispatches item 1" in b.find_element(By.ID, "dead-outcome").text
        )
        pacs.wait_for("SR", {study}, timeout_s=60)
        wait.until(lambda b: not b.find_elements(By.CSS_SELECTOR, "#dead-dispatches tr[data-item]"))
        assert get(router, "/dispatches")[0]["state"] == "done"

        # A change of the configuration: checked (diff, dry run), then applied.
        textarea = browser.find_element(By.ID, "config-text")
        wait.until(lambda b: "chest-ct" in textarea.get_attribute("value"))
        candidate = textarea.get_attribute("value").replace(
            "name: chest-ct\n    when: {Modality: CT}", "name: chest-mr\n    when: {Modality: MR}"
        )
        browser.execute_script(
            "arguments[0].value = arguments[1];arguments[0].dispatchEvent(new Event('input'));",
            textarea,
            candidate,
        )
        browser.find_element(By.ID, "config-check").click()
        wait.until(lambda b: b.find_element(By.ID, "config-outcome").text.startswith("Valid"))
        outcome = browser.find_element(By.ID, "config-outcome").text
        assert "2 series of 2 studies, 1 routed differently" in outcome, outcome
        changed = browser.find_elements(By.CSS_SELECTOR, "#dry-run tr.changed")
        assert len(changed) == 1 and "unrouted" in changed[0].text
        assert "+  - name: chest-mr" in browser.find_element(By.ID, "config-diff").get_attribute(
            "textContent"
        )
        browser.save_screenshot(str(tmp_path / "admin-check.png"))
        browser.find_element(By.ID, "config-apply").click()
        wait.until(lambda b: b.find_element(By.ID, "config-outcome").text.startswith("Applied"))
        assert [r.name for r in router.service.holder.current().rules] == [
            "crash-test",
            "chest-mr",
        ]
        assert "name: chest-mr" in (tmp_path / "radrouter.yaml").read_text(encoding="utf-8")
        wait.until(lambda b: "admin page" in b.find_element(By.ID, "config-history").text)
        assert "applied" in browser.find_element(By.ID, "config-history").text

        # Usage: this month's runs per algorithm and outcome.
        usage = browser.find_element(By.ID, "usage-table").text
        assert "always_negative" in usage and "crashing" in usage and "failed" in usage

        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(tmp_path / "admin.png"))
    assert (tmp_path / "admin.png").stat().st_size > 10_000
    if os.environ.get("RADROUTER_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        Image.open(tmp_path / "admin.png").convert("RGB").quantize(colors=64).save(
            DOCS_SCREENSHOT, optimize=True
        )
