"""The worklist page's sign-in in Debian's chromium: the provider on another site
(``localhost``) than the router (``127.0.0.1``), as a hospital's is; feedback under the
signed-in name; sign-out; and a cross-site form that changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.api.auth import RefusalReason
from router.service import wait_for
from testing.browser import headless_chromium
from testing.identity_provider import IdentityProvider, SignInUser, running_identity_provider
from testing.tls import CertificateAuthority
from tests.router.api.secured_router import SecuredRouter, secured_router

RADIOLOGIST = SignInUser(sub="u-3003", preferred_username="dr.wilson", groups=["radiologists"])
ADMIN = SignInUser(sub="u-4004", preferred_username="dr.cuddy", groups=["radrouter-admins"])


@pytest.fixture(params=["http", "https"])
def setting(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[SecuredRouter, IdentityProvider, Any]]:
    """Plain HTTP on loopback, and HTTPS with a certificate from a test CA (which chromium is
    told to accept: what the certificate is worth is tested in test_https.py)."""
    http_extra, ca_file = "", None
    if request.param == "https":
        ca = CertificateAuthority.create(tmp_path / "pki")
        cert = ca.issue("radrouter", ip_addresses=("127.0.0.1",))
        http_extra = f"  tls: {{cert_file: {cert.cert}, key_file: {cert.key}}}\n"
        ca_file = ca.cert_file
    with (
        running_identity_provider(public_host="localhost") as idp,
        secured_router(tmp_path / "router", idp, http_extra=http_extra, ca_file=ca_file) as router,
        headless_chromium(tmp_path / "chromium-profile") as browser,
    ):
        if ca_file is not None:
            browser.execute_cdp_cmd("Security.setIgnoreCertificateErrors", {"ignore": True})
        yield router, idp, browser


def text_of(browser: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.ID, element_id).text)


@pytest.mark.slow
def test_sign_in_feedback_sign_out_and_a_cross_site_form_in_chromium(
    setting: tuple[SecuredRouter, IdentityProvider, Any],
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    router, idp, browser = setting
    wait = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,))
    idp.user = RADIOLOGIST

    # Opening the page goes through the provider and back, signed in.
    browser.get(f"{router.url}/worklist")
    wait.until(lambda b: "Signed in as dr.wilson" in text_of(b, "signed-in-as"))
    assert browser.current_url == f"{router.url}/worklist"
    assert idp.token_requests[-1]["code_verifier"]
    assert not browser.find_element(By.ID, "reader").is_displayed()
    assert not browser.find_element(By.ID, "feedback-csv").is_displayed()  # admins only
    [cookie] = browser.get_cookies()
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    assert browser.execute_script("return document.cookie") == ""  # no script can read it

    # Feedback is recorded under the signed-in name.
    result = router.result_id
    wait.until(
        lambda b: b.find_elements(By.CSS_SELECTOR, f"button.agree[data-result-id='{result}']")
    )
    browser.find_element(By.ID, f"comment-{result}").send_keys("fine")
    browser.find_element(By.CSS_SELECTOR, f"button.agree[data-result-id='{result}']").click()
    wait.until(
        lambda b: (
            "Saved: agreed"
            in b.find_element(
                By.CSS_SELECTOR, f"li.result[data-result-id='{result}'] .feedback-state"
            ).text
        )
    )
    row = router.service.db.query_one(
        "SELECT reader, comment FROM feedback WHERE result_id = ?", (result,)
    )
    assert row is not None and (row["reader"], row["comment"]) == ("dr.wilson", "fine")

    # The admin page is not a radiologist's.
    browser.get(f"{router.url}/admin")
    assert "needs the admin role" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(f"{router.url}/worklist")
    wait.until(lambda b: "Signed in as dr.wilson" in text_of(b, "signed-in-as"))

    # Sign out; the old session is gone.
    browser.find_element(By.ID, "sign-out").click()
    wait.until(lambda b: "You have signed out" in text_of(b, "status"))
    assert (
        router.get(
            "/api/worklist", headers={"Cookie": f"__Host-radrouter-session={cookie['value']}"}
        ).status_code
        == 401
    )

    # Signed in again as an administrator, the browser visits another site whose page posts a
    # form to the router: the retry it asks for does not happen.
    idp.user = ADMIN
    browser.find_element(By.ID, "sign-in-again").click()
    wait.until(lambda b: "Signed in as dr.cuddy" in text_of(b, "signed-in-as"))
    assert browser.find_element(By.ID, "feedback-csv").is_displayed()
    job_id = router.failed_jobs[0]
    before = dict(router.service.db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,)) or {})
    idp.pages["attack"] = (
        f'<form id="f" method="post" action="{router.url}/jobs/{job_id}/retry">'
        '<input name="x" value="1"></form><script>document.getElementById("f").submit()</script>'
    )
    router.refusals.clear()
    browser.get(f"{idp.url}/pages/attack")
    assert wait_for(lambda: bool(router.refusals), 10, 0.1)
    [failure] = router.refusals
    assert (failure.status, failure.reason, failure.path) == (
        403,
        RefusalReason.CROSS_SITE,
        f"/jobs/{job_id}/retry",
    )
    after = dict(router.service.db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,)) or {})
    assert after == before

    # The admin page, signed in: a retry from it carries the session's CSRF token.
    browser.get(f"{router.url}/admin")
    wait.until(lambda b: "Signed in as dr.cuddy" in text_of(b, "who"))
    wait.until(
        lambda b: b.find_elements(By.CSS_SELECTOR, f"#dead-jobs tr[data-item='jobs-{job_id}']")
    )
    browser.find_element(
        By.CSS_SELECTOR, f"#dead-jobs tr[data-item='jobs-{job_id}'] button.retry"
    ).click()
    wait.until(lambda b: f"Requeued jobs item {job_id}" in text_of(b, "dead-outcome"))
    retried = router.service.db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
    assert retried is not None and dict(retried) != before
