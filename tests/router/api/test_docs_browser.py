"""The index, Swagger UI and ReDoc in a real headless browser that can reach no other host.

As in a hospital network that blocks CDNs: every host name but the router's 127.0.0.1 fails to
resolve, so a page that needed anything from elsewhere renders blank (FastAPI's default docs
pages do) or logs the failed load, and the tests fail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from algorithms.registry import Registry
from testing.browser import headless_chromium
from testing.router_process import RouterUnderTest, StartRouter

CONFIG = (
    "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
    "http: {host: 127.0.0.1, port: 0}\n"
    "rules: []\n"
)
# A quoted URL in a console message, on any host but the router's.
OTHER_HOST_URL = re.compile(r"'(?!https?://127\.0\.0\.1[:/])[a-z]+://")


@pytest.fixture
def offline_browser(tmp_path: Path) -> Iterator[Any]:
    """Chromium with only 127.0.0.1 reachable and its console kept for the test to read."""
    with headless_chromium(tmp_path / "chromium-profile", offline=True, keep_logs=True) as driver:
        yield driver


@pytest.fixture
def router(start_router: StartRouter) -> RouterUnderTest:
    return start_router(CONFIG, registry=Registry({}))


def url(router: RouterUnderTest, path: str) -> str:
    return f"http://127.0.0.1:{router.http_port}{path}"


def console_errors(browser: Any) -> list[str]:
    """Errors the page logged since the last look: failed loads, script errors, refusals by its
    Content-Security-Policy of anything but another host (those are the policy at work)."""
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and not _refused_other_host(entry["message"])
    ]


def requests_to_other_hosts(browser: Any) -> list[str]:
    """URLs the page asked any host but 127.0.0.1 for, since the last look, except those its
    Content-Security-Policy stopped before they left the browser."""
    sent: dict[str, str] = {}
    stopped: set[str] = set()
    for entry in browser.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        params = event.get("params", {})
        if event["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif event["method"] == "Network.loadingFailed" and params.get("blockedReason") == "csp":
            stopped.add(params["requestId"])
    return [
        address
        for request_id, address in sent.items()
        if request_id not in stopped
        and urlsplit(address).scheme in {"http", "https", "ws", "wss"}
        and urlsplit(address).hostname != "127.0.0.1"
    ]


def _refused_other_host(message: str) -> bool:
    return (
        "violates the following Content Security Policy" in message
        and OTHER_HOST_URL.search(message) is not None
    )


@pytest.mark.slow
def test_swagger_ui_lists_the_operations_with_no_other_host_reachable(
    router: RouterUnderTest, offline_browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    offline_browser.get(url(router, "/docs"))
    wait = WebDriverWait(offline_browser, 20)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) >= 5)
    paths = [
        e.text for e in offline_browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    ]
    assert "/studies" in paths and "/jobs/{job_id}/retry" in paths
    assert "radrouter" in offline_browser.find_element(By.CSS_SELECTOR, ".info .title").text
    assert not offline_browser.find_elements(
        By.CSS_SELECTOR, ".validator-badge, img[src*='validator']"
    )
    assert console_errors(offline_browser) == []
    assert requests_to_other_hosts(offline_browser) == []


@pytest.mark.slow
def test_redoc_shows_the_api_and_its_operations_with_no_other_host_reachable(
    router: RouterUnderTest, offline_browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    offline_browser.get(url(router, "/redoc"))
    wait = WebDriverWait(offline_browser, 20)
    wait.until(lambda b: "radrouter" in b.find_element(By.TAG_NAME, "body").text)
    wait.until(
        lambda b: b.find_elements(
            By.CSS_SELECTOR, "[data-section-id='operation/studies_studies_get']"
        )
    )
    title = offline_browser.find_element(By.CSS_SELECTOR, ".api-info h1").text
    assert title.startswith("radrouter")
    operation = offline_browser.find_element(
        By.CSS_SELECTOR, "[data-section-id='operation/studies_studies_get']"
    )
    assert "/studies" in operation.text
    assert console_errors(offline_browser) == []
    assert requests_to_other_hosts(offline_browser) == []


@pytest.mark.slow
def test_index_lists_what_the_server_offers_and_leads_to_the_worklist(
    router: RouterUnderTest, offline_browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    offline_browser.get(url(router, "/"))
    links = {
        a.text: a.get_attribute("href")
        for a in offline_browser.find_elements(By.CSS_SELECTOR, "main a")
    }
    assert links == {
        "AI worklist": url(router, "/worklist"),
        "Administration": url(router, "/admin"),
        "API documentation (Swagger UI)": url(router, "/docs"),
        "API reference (ReDoc)": url(router, "/redoc"),
        "OpenAPI description": url(router, "/openapi.json"),
        "Prometheus metrics": url(router, "/metrics"),
        "Health": url(router, "/healthz"),
        "Readiness": url(router, "/readyz"),
    }
    # The stylesheet applied: the page header has the worklist page's rule under it.
    header = offline_browser.find_element(By.CSS_SELECTOR, ".page-header")
    assert header.value_of_css_property("border-bottom-style") == "solid"
    assert console_errors(offline_browser) == []
    assert requests_to_other_hosts(offline_browser) == []

    offline_browser.find_element(By.LINK_TEXT, "AI worklist").click()
    WebDriverWait(offline_browser, 20).until(
        lambda b: (
            b.current_url == url(router, "/worklist")
            and b.find_element(By.TAG_NAME, "h1").text == "AI worklist"
        )
    )
    WebDriverWait(offline_browser, 20).until(
        lambda b: b.find_element(By.ID, "status").text != "Loading…"
    )
    assert console_errors(offline_browser) == []
    assert requests_to_other_hosts(offline_browser) == []
