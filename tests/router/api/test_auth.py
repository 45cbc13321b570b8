"""Authentication on a running router: every kind of bad credential is refused and recorded,
roles decide, the feedback's reader is the token's user, an admin retries, cross-site
requests and other Hosts change nothing, and the worklist's sign-in (PKCE) opens a session."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from config.schema import ApiRole
from router.api.api_keys import create_key, revoke_key
from router.api.auth import RefusalReason
from router.api.sessions import SESSION_COOKIE, SIGN_IN_COOKIE
from router.audit.messages import EventId, Outcome
from router.service import wait_for
from testing.identity_provider import IdentityProvider, SignInUser, running_identity_provider
from tests.router.api.secured_router import (
    SecuredRouter,
    callback_url,
    secured_router,
    set_cookies,
    sign_in,
    start_sign_in,
)

RADIOLOGIST = SignInUser(sub="u-3003", preferred_username="dr.wilson", groups=["radiologists"])
ADMIN = SignInUser(sub="u-4004", preferred_username="dr.cuddy", groups=["radrouter-admins"])
NOBODY = SignInUser(sub="u-5005", preferred_username="visitor", groups=["cafeteria"])


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRouter]:
    with (
        running_identity_provider() as idp,
        secured_router(tmp_path_factory.mktemp("secured"), idp) as secured,
    ):
        yield secured


@pytest.fixture
def refusals(router: SecuredRouter) -> SecuredRouter:
    router.refusals.clear()
    return router


def job_row(router: SecuredRouter, job_id: int) -> dict[str, Any]:
    row = router.service.db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
    assert row is not None
    return dict(row)


# --------------------------------------------------------------------------------------------
# Refused, and recorded


def test_probes_answer_without_credentials_and_readyz_says_how_the_api_is_protected(
    router: SecuredRouter,
) -> None:
    assert router.get("/healthz").json() == {"status": "ok"}
    ready = router.get("/readyz").json()
    assert ready["http_security"] == {
        "tls": False,
        "authentication": True,
        "loopback_only": True,
        "secure": False,
    }


BadCredentials = Callable[[IdentityProvider, SecuredRouter], dict[str, str]]
BAD_CREDENTIALS: dict[str, tuple[BadCredentials, RefusalReason, str]] = {
    "missing": (lambda idp, r: {}, RefusalReason.NO_CREDENTIALS, "credentials are required"),
    "expired": (
        lambda idp, r: r.bearer(idp.token(exp=1_000_000, iat=999_000, nbf=999_000)),
        RefusalReason.BAD_TOKEN,
        "expired",
    ),
    "wrong audience": (
        lambda idp, r: r.bearer(idp.token(aud="another-application")),
        RefusalReason.BAD_TOKEN,
        "another audience",
    ),
    "wrong issuer": (
        lambda idp, r: r.bearer(idp.token(iss="https://idp.elsewhere.example")),
        RefusalReason.BAD_TOKEN,
        "another issuer",
    ),
    "unsigned (alg none)": (
        lambda idp, r: r.bearer(idp.unsigned_token(["radrouter-admins"])),
        RefusalReason.BAD_TOKEN,
        "'none' is not allowed",
    ),
    "HS256 with the public key": (
        lambda idp, r: r.bearer(idp.hs256_with_public_key(["radrouter-admins"])),
        RefusalReason.BAD_TOKEN,
        "'HS256' is not allowed",
    ),
    "signed by a key the provider never published": (
        lambda idp, r: r.bearer(idp.signed_by_stranger(["radrouter-admins"])),
        RefusalReason.BAD_TOKEN,
        "signature does not verify",
    ),
    "not valid yet": (
        lambda idp, r: r.bearer(idp.token(nbf=4_000_000_000)),
        RefusalReason.BAD_TOKEN,
        "not valid yet",
    ),
    "not a bearer scheme": (
        lambda idp, r: {"Authorization": "Basic YWRtaW46YWRtaW4="},
        RefusalReason.BAD_TOKEN,
        "Bearer",
    ),
    "unknown API key": (
        lambda idp, r: {"X-API-Key": "rrk_000000000000_" + "A" * 43},
        RefusalReason.BAD_API_KEY,
        "unknown or revoked",
    ),
    "an API key with one character changed": (
        lambda idp, r: r.bearer(r.admin_key[:-1] + ("A" if r.admin_key[-1] != "A" else "B")),
        RefusalReason.BAD_API_KEY,
        "unknown or revoked",
    ),
    "an unknown session cookie": (
        lambda idp, r: {"Cookie": f"{SESSION_COOKIE}=made-up"},
        RefusalReason.BAD_SESSION,
        "sign in again",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
@pytest.mark.parametrize("request_line", ["GET /studies", "POST /jobs/{job}/retry"])
def test_bad_credentials_get_401_and_are_recorded(
    refusals: SecuredRouter, case: str, request_line: str
) -> None:
    router = refusals
    credentials, reason, said = BAD_CREDENTIALS[case]
    method, path = request_line.split(" ")
    path = path.format(job=router.failed_jobs[0])
    before = job_row(router, router.failed_jobs[0])

    answer = httpx.request(
        method, router.url + path, headers=credentials(router.idp, router), timeout=30
    )

    assert answer.status_code == 401, answer.text
    assert said in answer.json()["detail"]
    assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="radrouter"')
    [failure] = router.refusals
    assert (failure.status, failure.reason, failure.method, failure.path) == (
        401,
        reason,
        method,
        path,
    )
    assert failure.client == "127.0.0.1"
    assert failure.describe().startswith(f"401 {reason.value}: {method} {path} from 127.0.0.1")
    assert job_row(router, router.failed_jobs[0]) == before


def test_a_refusal_never_records_the_credential(refusals: SecuredRouter) -> None:
    router = refusals
    token = router.idp.token(aud="another-application")
    key = "rrk_000000000000_" + "B" * 43
    router.get("/studies", headers=router.bearer(token))
    router.get("/studies", headers={"X-API-Key": key})
    recorded = " ".join(f"{f.describe()} {f!r}" for f in router.refusals)
    assert token not in recorded and token.split(".")[2] not in recorded
    assert key not in recorded and "B" * 43 not in recorded


@pytest.mark.parametrize(
    ("groups", "request_line", "needs"),
    [
        (["pacs-viewers"], "POST /api/results/{result}/feedback", "radiologist"),
        (["pacs-viewers"], "GET /jobs", "admin"),
        (["radiologists"], "POST /jobs/{job}/retry", "admin"),
        (["radiologists"], "GET /api/feedback.csv", "admin"),
        (["radiologists"], "GET /dispatches", "admin"),
        (["cafeteria"], "GET /studies", "viewer"),
        ([], "GET /api/worklist", "viewer"),
    ],
)
def test_a_role_too_low_gets_403_and_is_recorded_with_who_it_was(
    refusals: SecuredRouter, groups: list[str], request_line: str, needs: str
) -> None:
    router = refusals
    method, path = request_line.split(" ")
    path = path.format(job=router.failed_jobs[0], result=router.result_id)
    before = job_row(router, router.failed_jobs[0])

    answer = httpx.request(
        method,
        router.url + path,
        headers=router.bearer(router.idp.token(groups)),
        json={"agree": True} if method == "POST" else None,
        timeout=30,
    )

    assert answer.status_code == 403, answer.text
    assert f"needs the {needs} role" in answer.json()["detail"]
    [failure] = router.refusals
    assert (failure.status, failure.reason, failure.principal) == (
        403,
        RefusalReason.ROLE,
        "dr.cuddy",
    )
    assert failure.describe().startswith(f"403 role: {method} {path} from 127.0.0.1 as dr.cuddy")
    assert job_row(router, router.failed_jobs[0]) == before


def test_an_api_key_of_the_viewer_role_reads_but_does_not_administer(router: SecuredRouter) -> None:
    for headers in ({"X-API-Key": router.viewer_key}, router.bearer(router.viewer_key)):
        assert router.get("/studies", headers=headers).status_code == 200
        assert router.get("/api/worklist", headers=headers).status_code == 200
        assert router.get("/metrics", headers=headers).status_code == 200
        assert router.get("/jobs", headers=headers).status_code == 403


def test_the_pages_need_a_signed_in_user_and_a_browser_is_sent_to_the_sign_in(
    router: SecuredRouter,
) -> None:
    for path in ("/", "/docs", "/redoc", "/worklist", "/openapi.json", "/metrics"):
        assert router.get(path).status_code == 401, path
    page = router.get("/docs", headers={"Accept": "text/html"})
    assert page.status_code == 303
    assert page.headers["location"] == "/auth/login?next=%2Fdocs"
    viewer = router.bearer(router.idp.token(["pacs-viewers"]))
    assert router.get("/docs", headers=viewer).status_code == 200
    spec = router.get("/openapi.json", headers=viewer).json()
    assert spec["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"


# --------------------------------------------------------------------------------------------
# What each role may do


def test_a_radiologists_feedback_records_the_tokens_user_not_the_body(
    router: SecuredRouter,
) -> None:
    token = router.idp.token(["radiologists"], sub="u-7", preferred_username="dr.foreman")

    stored = router.post(
        f"/api/results/{router.result_id}/feedback",
        headers=router.bearer(token),
        json={"agree": False, "comment": "missed the nodule", "reader": "Dr. Chief Radiologist"},
    )

    assert stored.status_code == 201, stored.text
    assert stored.json()["reader"] == "dr.foreman"
    export = router.get("/api/feedback.csv", headers={"X-API-Key": router.admin_key}).text
    assert "dr.foreman" in export and "Dr. Chief Radiologist" not in export


def test_an_admin_retries_a_failed_job_with_a_token_and_with_an_api_key(
    router: SecuredRouter,
) -> None:
    job_id = router.failed_jobs[1]
    token = router.idp.token(["radrouter-admins"], algorithm="ES256")
    for headers in (router.bearer(token), {"X-API-Key": router.admin_key}):
        assert wait_for(lambda: job_row(router, job_id)["state"] == "failed", 30, 0.1)
        started = job_row(router, job_id)["started_at"]

        answer = router.post(f"/jobs/{job_id}/retry", headers=headers)

        assert answer.status_code == 200, answer.text
        assert answer.json() == {"requeued": job_id}
        assert wait_for(lambda: job_row(router, job_id)["started_at"] != started, 30, 0.1)  # noqa: B023


def test_an_admin_api_key_lists_jobs_and_dead_letters(router: SecuredRouter) -> None:
    admin = router.bearer(router.admin_key)
    assert {job["id"] for job in router.get("/jobs", headers=admin).json()} >= set(
        router.failed_jobs
    )
    assert router.get("/dispatches", headers=admin).status_code == 200
    assert router.get("/deliveries", headers=admin).status_code == 200


def test_a_new_api_key_counts_at_once_and_a_revoked_one_is_refused_at_once(
    router: SecuredRouter,
) -> None:
    key, entry = create_key(router.keys_file, name="short-lived", role=ApiRole.VIEWER)
    assert router.get("/studies", headers={"X-API-Key": key}).status_code == 200
    revoke_key(router.keys_file, "short-lived")
    assert router.get("/studies", headers={"X-API-Key": key}).status_code == 401
    assert entry.id not in router.keys_file.read_text()


# --------------------------------------------------------------------------------------------
# Cross-site requests and DNS rebinding


def test_a_cross_site_form_post_changes_nothing(refusals: SecuredRouter) -> None:
    """What a page on another site can make a browser send: a form POST, no JSON, no custom
    header, the browser's own cookies (if SameSite let them through) and its Origin."""
    router = refusals
    admin = sign_in(router.url, router.idp, ADMIN)
    job_id = router.failed_jobs[0]
    before = job_row(router, job_id)
    form = {"Content-Type": "application/x-www-form-urlencoded", **admin.cookies}

    with_origin = router.post(
        f"/jobs/{job_id}/retry",
        headers={**form, "Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site"},
        content=b"x=1",
    )
    same_site = router.post(
        f"/jobs/{job_id}/retry",
        headers={**form, "Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site"},
        content=b"x=1",
    )
    old_browser = router.post(f"/jobs/{job_id}/retry", headers=form, content=b"x=1")

    assert (with_origin.status_code, same_site.status_code, old_browser.status_code) == (
        403,
        403,
        403,
    )
    assert [f.reason for f in router.refusals] == [
        RefusalReason.CROSS_SITE,
        RefusalReason.CROSS_SITE,
        RefusalReason.CSRF_TOKEN,
    ]
    assert job_row(router, job_id) == before


def test_the_pages_own_request_with_the_csrf_token_is_let_through(router: SecuredRouter) -> None:
    radiologist = sign_in(router.url, router.idp, RADIOLOGIST)
    same_origin = {"Origin": router.url, "Sec-Fetch-Site": "same-origin"}

    stored = router.post(
        f"/api/results/{router.result_id}/feedback",
        headers={**radiologist.unsafe(), **same_origin},
        json={"agree": True, "reader": "someone else"},
    )

    assert stored.status_code == 201, stored.text
    assert stored.json()["reader"] == "dr.wilson"


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8080", "127.0.0.2", ""])
def test_a_request_for_another_host_is_refused(refusals: SecuredRouter, host: str) -> None:
    router = refusals
    admin = {"X-API-Key": router.admin_key}

    answer = router.get("/studies", headers={**admin, "Host": host})

    assert answer.status_code == 400
    [failure] = router.refusals
    assert failure.reason is RefusalReason.HOST
    assert router.get("/healthz", headers={"Host": host}).status_code == 200  # probes by IP
    assert router.get("/studies", headers={**admin, "Host": "localhost:9"}).status_code == 200


# --------------------------------------------------------------------------------------------
# The worklist page's sign-in (authorization code with PKCE), run by hand


def test_sign_in_opens_a_strict_httponly_secure_session_with_the_users_roles(
    router: SecuredRouter,
) -> None:
    signed_in = sign_in(router.url, router.idp, RADIOLOGIST)

    cookie = signed_in.attributes
    assert (cookie["httponly"], cookie["secure"], cookie["samesite"], cookie["path"]) == (
        True,
        True,
        "strict",
        "/",
    )
    assert signed_in.session["user"] == "dr.wilson"
    assert signed_in.session["roles"] == ["radiologist"]
    assert signed_in.session["may_give_feedback"] and not signed_in.session["may_administer"]
    assert router.get("/api/worklist", headers=signed_in.cookies).status_code == 200
    assert router.get("/jobs", headers=signed_in.cookies).status_code == 403
    # The token exchange carried the PKCE verifier and the client id, never a secret.
    exchange = router.idp.token_requests[-1]
    assert exchange["code_verifier"] and exchange["client_id"] == "radrouter-worklist"


def test_the_authorization_request_asks_for_a_code_with_s256_pkce(router: SecuredRouter) -> None:
    authorization, _ = start_sign_in(router.url, next_path="https://attacker.example/")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorization).query))

    assert authorization.startswith(f"{router.idp.url}/authorize?")
    assert query["response_type"] == "code" and query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43 and len(query["state"]) >= 43
    assert query["redirect_uri"] == f"{router.url}/auth/callback"
    assert "openid" in query["scope"].split()


def test_sign_out_ends_the_session(router: SecuredRouter) -> None:
    signed_in = sign_in(router.url, router.idp, RADIOLOGIST)

    assert router.post("/auth/logout", headers=signed_in.cookies).status_code == 403  # no CSRF
    assert router.post("/auth/logout", headers=signed_in.unsafe()).status_code == 200

    assert router.get("/api/worklist", headers=signed_in.cookies).status_code == 401


def test_sign_in_and_sign_out_are_audited_as_login_and_logout(router: SecuredRouter) -> None:
    signed_in = sign_in(router.url, router.idp, RADIOLOGIST)
    assert router.post("/auth/logout", headers=signed_in.unsafe()).status_code == 200

    trail = router.service.audit_trail
    assert trail is not None and trail.flush()
    sessions = [
        (m.event_types[0].meaning, m.outcome, m.requestors()[0].user_id)
        for m in trail.log.messages()
        if m.event_id is EventId.USER_AUTHENTICATION and m.outcome is Outcome.SUCCESS
    ]
    assert ("Login", Outcome.SUCCESS, "dr.wilson") in sessions
    assert ("Logout", Outcome.SUCCESS, "dr.wilson") in sessions


def test_after_sign_in_the_browser_goes_on_to_a_local_page_only(router: SecuredRouter) -> None:
    router.idp.user = RADIOLOGIST
    authorization, binding = start_sign_in(router.url, next_path="//attacker.example/x")
    page = httpx.get(
        callback_url(authorization), headers={"Cookie": f"{SIGN_IN_COOKIE}={binding}"}, timeout=30
    )
    assert page.status_code == 200
    assert '<meta http-equiv="refresh" content="0;url=/worklist">' in page.text


def failed_sign_in(
    router: SecuredRouter, *, cookie: str | None = None, user: SignInUser = RADIOLOGIST
) -> httpx.Response:
    router.idp.user = user
    authorization, binding = start_sign_in(router.url)
    headers = {"Cookie": f"{SIGN_IN_COOKIE}={cookie if cookie is not None else binding}"}
    return httpx.get(callback_url(authorization), headers=headers, timeout=30)


def test_a_sign_in_finished_in_another_browser_is_refused_and_recorded(
    refusals: SecuredRouter,
) -> None:
    """Login CSRF: an attacker's own code, delivered to the victim's browser."""
    router = refusals
    answer = failed_sign_in(router, cookie="another-browsers-binding")

    assert answer.status_code == 400
    assert SESSION_COOKIE not in set_cookies(answer)
    [failure] = router.refusals
    assert (failure.reason, failure.path) == (RefusalReason.SIGN_IN, "/auth/callback")


def test_a_user_without_a_radrouter_role_gets_no_session(refusals: SecuredRouter) -> None:
    router = refusals
    answer = failed_sign_in(router, user=NOBODY)

    assert answer.status_code == 403
    assert "visitor" in answer.text and "no radrouter role" in answer.text
    assert SESSION_COOKIE not in set_cookies(answer)
    assert router.refusals[-1].reason is RefusalReason.SIGN_IN


def test_a_sign_in_the_provider_refused_is_refused_and_recorded(refusals: SecuredRouter) -> None:
    router = refusals
    router.idp.deny_with = "access_denied"
    try:
        answer = failed_sign_in(router)
    finally:
        router.idp.deny_with = None

    assert answer.status_code == 401 and "access_denied" in answer.text
    assert router.refusals[-1].reason is RefusalReason.SIGN_IN


def test_a_code_is_used_once(router: SecuredRouter) -> None:
    router.idp.user = RADIOLOGIST
    authorization, binding = start_sign_in(router.url)
    back = callback_url(authorization)
    headers = {"Cookie": f"{SIGN_IN_COOKIE}={binding}"}

    assert httpx.get(back, headers=headers, timeout=30).status_code == 200
    assert httpx.get(back, headers=headers, timeout=30).status_code == 400


def test_radrouter_status_reads_a_secured_router_with_the_key_from_the_environment(
    router: SecuredRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.admin import API_KEY_ENV, ApiSource, SourceError, read_status

    if not router.url.startswith("http://"):
        pytest.skip("the module's router serves https with a test CA")
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.raises(SourceError, match="401"):
        read_status(ApiSource(router.url, trust_env=False), 20)
    monkeypatch.setenv(API_KEY_ENV, router.admin_key)
    status = read_status(ApiSource(router.url, trust_env=False), 20)
    assert set(router.failed_jobs) <= {item.id for item in status.dead["jobs"]}
