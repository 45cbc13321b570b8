"""The gate in-process and on the shipped config: which role each endpoint needs, public
metrics, an identity provider that cannot be reached, and the default loopback mode (no TLS,
no authentication) that still refuses cross-site state changes and other Hosts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from algorithms.registry import Registry
from config.loader import load_default_config, parse_config
from config.schema import ApiRole, HttpConfig, NodeConfig
from router.api.access import Access, needed_for
from router.api.api_keys import create_key
from router.api.app import ApiDependencies, Readiness, create_app
from router.api.auth import AuthFailure, HttpSecurity, RefusalEvents, RefusalReason
from router.api.tokens import IdentityProviderUnavailableError
from router.metrics import Metrics
from router.service import RouterService
from router.store.database import SqliteDatabase
from testing.identity_provider import IdentityProvider, running_identity_provider
from testing.orthanc import free_port
from tests.router.admin_page.support import bare_admin

# Every endpoint the app serves with the role it needs: a new endpoint fails this test until it
# is placed here (and in router/api/access.py, where anything not listed needs admin).
EXPECTED: dict[tuple[str, str], ApiRole | Access] = {
    ("GET", "/healthz"): Access.PUBLIC,
    ("GET", "/readyz"): Access.PUBLIC,
    ("GET", "/favicon.ico"): Access.PUBLIC,
    ("GET", "/auth/login"): Access.PUBLIC,
    ("GET", "/auth/callback"): Access.PUBLIC,
    ("GET", "/auth/session"): Access.SIGNED_IN,
    ("POST", "/auth/logout"): Access.SIGNED_IN,
    ("GET", "/metrics"): ApiRole.VIEWER,
    ("GET", "/"): ApiRole.VIEWER,
    ("GET", "/docs"): ApiRole.VIEWER,
    ("GET", "/redoc"): ApiRole.VIEWER,
    ("GET", "/openapi.json"): ApiRole.VIEWER,
    ("GET", "/docs/assets/{name}"): ApiRole.VIEWER,
    ("GET", "/worklist"): ApiRole.VIEWER,
    ("GET", "/worklist/assets/{name}"): ApiRole.VIEWER,
    ("GET", "/api/worklist"): ApiRole.VIEWER,
    ("GET", "/api/results/{result_id}/thumbnail.png"): ApiRole.VIEWER,
    ("GET", "/api/results/{result_id}/findings/{finding}/slices"): ApiRole.VIEWER,
    ("GET", "/studies"): ApiRole.VIEWER,
    ("GET", "/studies/{study_uid}"): ApiRole.VIEWER,
    ("POST", "/api/results/{result_id}/feedback"): ApiRole.RADIOLOGIST,
    ("GET", "/api/feedback.csv"): ApiRole.ADMIN,
    ("GET", "/api/usage"): ApiRole.ADMIN,
    ("GET", "/api/usage.csv"): ApiRole.ADMIN,
    ("GET", "/api/qa/trend"): ApiRole.ADMIN,
    ("GET", "/admin"): ApiRole.ADMIN,
    ("GET", "/admin/assets/{name}"): ApiRole.ADMIN,
    ("GET", "/api/admin/overview"): ApiRole.ADMIN,
    ("GET", "/api/admin/studies"): ApiRole.ADMIN,
    ("GET", "/api/admin/algorithms"): ApiRole.ADMIN,
    ("GET", "/api/admin/dead-letters"): ApiRole.ADMIN,
    ("GET", "/api/admin/config"): ApiRole.ADMIN,
    ("GET", "/api/admin/config/history"): ApiRole.ADMIN,
    ("POST", "/api/admin/config/check"): ApiRole.ADMIN,
    ("POST", "/api/admin/config/apply"): ApiRole.ADMIN,
    ("GET", "/api/drift"): ApiRole.ADMIN,
    ("POST", "/api/drift/{algorithm}/baseline"): ApiRole.ADMIN,
    ("GET", "/jobs"): ApiRole.ADMIN,
    ("GET", "/jobs/{job_id}"): ApiRole.ADMIN,
    ("POST", "/jobs/{job_id}/retry"): ApiRole.ADMIN,
    ("GET", "/dispatches"): ApiRole.ADMIN,
    ("POST", "/dispatches/{dispatch_id}/retry"): ApiRole.ADMIN,
    ("GET", "/deliveries"): ApiRole.ADMIN,
    ("POST", "/deliveries/{delivery_id}/retry"): ApiRole.ADMIN,
}


def app_with(tmp_path: Path, security: HttpSecurity | None) -> FastAPI:
    db = SqliteDatabase(tmp_path / "radrouter.sqlite3")
    return create_app(
        ApiDependencies(
            db=db,
            metrics=Metrics(lambda: {}),
            readiness=lambda: Readiness(True, {}),
            retry_dispatch=lambda _id: 0,
            retry_job=lambda _id: False,
            security=security,
            admin=bare_admin(db),
        )
    )


def http_config(idp: IdentityProvider, tmp_path: Path, **auth: Any) -> HttpConfig:
    return parse_config(
        "http:\n"
        "  allowed_hosts: [testserver]\n"
        f"  auth: {{api_keys_file: {tmp_path / 'keys.json'}, oidc: {idp.oidc_yaml()}"
        + "".join(f", {name}: {value}" for name, value in auth.items())
        + "}\n",
        "gate.yaml",
    ).http


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with running_identity_provider() as provider:
        yield provider


def test_every_endpoint_needs_the_role_the_policy_gives_it(
    tmp_path: Path, idp: IdentityProvider
) -> None:
    app = app_with(tmp_path, HttpSecurity.from_config(http_config(idp, tmp_path)))
    client = TestClient(app)
    documented = {
        (method.upper(), path)
        for path, operations in client.get("/openapi.json", headers=bearer(idp, "radrouter-admins"))
        .json()["paths"]
        .items()
        for method in operations
    }
    assert documented <= set(EXPECTED), "an endpoint the access policy test does not know"
    below = {ApiRole.RADIOLOGIST: "pacs-viewers", ApiRole.ADMIN: "radiologists"}
    group = {
        ApiRole.VIEWER: "pacs-viewers",
        ApiRole.RADIOLOGIST: "radiologists",
        ApiRole.ADMIN: "radrouter-admins",
    }
    for (method, template), needed in EXPECTED.items():
        path = re.sub(r"\{[^}]+\}", "1", template)
        assert needed_for(method, path) == needed, (method, template)

        def call(headers: dict[str, str], method: str = method, path: str = path) -> int:
            body = {"agree": True} if method == "POST" else None
            return int(client.request(method, path, headers=headers, json=body).status_code)

        if needed is Access.PUBLIC:
            assert call({}) not in (401, 403), template
            continue
        assert call({}) == 401, template
        assert call(bearer(idp, "cafeteria")) == 403, template  # signed in, no role
        if needed in below:
            assert call(bearer(idp, below[needed])) == 403, template
        allowed = group[needed] if isinstance(needed, ApiRole) else "pacs-viewers"
        assert call(bearer(idp, allowed)) not in (401, 403), template


def bearer(idp: IdentityProvider, group: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {idp.token([group])}"}


def test_a_path_the_policy_does_not_name_needs_admin() -> None:
    assert needed_for("GET", "/jobs/1/something-new") is ApiRole.ADMIN
    assert needed_for("DELETE", "/studies/1") is ApiRole.ADMIN
    assert needed_for("POST", "/studies") is ApiRole.ADMIN
    assert needed_for("GET", "/healthz/../jobs") is ApiRole.ADMIN


def test_metrics_are_public_only_when_configured(tmp_path: Path, idp: IdentityProvider) -> None:
    closed = TestClient(app_with(tmp_path, HttpSecurity.from_config(http_config(idp, tmp_path))))
    public = TestClient(
        app_with(
            tmp_path, HttpSecurity.from_config(http_config(idp, tmp_path, metrics_public="true"))
        )
    )
    assert closed.get("/metrics").status_code == 401
    assert public.get("/metrics").status_code == 200
    assert public.get("/studies").status_code == 401  # only the metrics


def test_an_unreachable_identity_provider_answers_503_and_is_recorded(
    tmp_path: Path, idp: IdentityProvider
) -> None:
    def unreachable(url: str) -> dict[str, Any]:
        raise IdentityProviderUnavailableError(f"{url}: connection refused")

    refused: list[AuthFailure] = []
    security = HttpSecurity.from_config(
        http_config(idp, tmp_path), fetch=unreachable, on_refused=refused.append
    )
    client = TestClient(app_with(tmp_path, security))
    key, _ = create_key(tmp_path / "keys.json", name="bridge", role=ApiRole.VIEWER)

    answer = client.get("/studies", headers={"Authorization": f"Bearer {idp.token()}"})

    assert answer.status_code == 503
    assert [f.reason for f in refused] == [RefusalReason.IDENTITY_PROVIDER]
    assert client.get("/studies", headers={"X-API-Key": key}).status_code == 200  # keys still work


def test_a_failing_refusal_hook_does_not_change_the_answer(
    tmp_path: Path, idp: IdentityProvider
) -> None:
    def broken(_failure: AuthFailure) -> None:
        raise RuntimeError("audit trail is down")

    security = HttpSecurity.from_config(http_config(idp, tmp_path), on_refused=broken)
    assert TestClient(app_with(tmp_path, security)).get("/studies").status_code == 401


def test_roles_come_from_a_nested_claim_through_the_role_map(
    tmp_path: Path, idp: IdentityProvider
) -> None:
    http = parse_config(
        "http:\n"
        "  allowed_hosts: [testserver]\n"
        f"  auth: {{oidc: {{issuer: '{idp.url}', audience: radrouter-api, "
        f"jwks_url: '{idp.jwks_url}', role_claim: realm_access.roles, "
        "role_map: {rr-admin: admin}, user_claim: email}}\n",
        "nested.yaml",
    ).http
    client = TestClient(app_with(tmp_path, HttpSecurity.from_config(http)))
    admin = idp.token(realm_access={"roles": ["rr-admin", "offline_access"]}, email="c@h.example")
    plain = idp.token(realm_access={"roles": ["offline_access"]})

    assert client.get("/jobs", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    assert client.get("/studies", headers={"Authorization": f"Bearer {plain}"}).status_code == 403
    who = client.get("/auth/session", headers={"Authorization": f"Bearer {admin}"}).json()
    assert (who["user"], who["roles"], who["csrf_token"]) == ("c@h.example", ["admin"], None)


# --------------------------------------------------------------------------------------------
# The shipped config: plain HTTP on loopback, no authentication, marked insecure


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[tuple[list[AuthFailure], str]]:
    default = load_default_config()
    assert (default.http.host, default.http.tls, default.http.auth) == ("127.0.0.1", None, None)
    config = default.model_copy(
        update={
            "http": default.http.model_copy(update={"port": 0}),
            "node": NodeConfig(bind="127.0.0.1", port=free_port()),
        }
    )
    service = RouterService(config, data_dir=tmp_path / "data", registry=Registry({}))
    refusals: list[AuthFailure] = []
    recorder = service.on_http_refused

    def observe(failure: AuthFailure) -> None:
        refusals.append(failure)
        recorder(failure)

    service.on_http_refused = observe
    service.start(warm=False)
    try:
        yield refusals, f"http://127.0.0.1:{service.http_port}"
    finally:
        service.stop()


def test_the_shipped_config_serves_on_loopback_without_credentials_marked_insecure(
    shipped: tuple[list[AuthFailure], str],
) -> None:
    _, url = shipped
    assert httpx.get(f"{url}/readyz").json()["http_security"] == {
        "tls": False,
        "authentication": False,
        "loopback_only": True,
        "secure": False,
    }
    assert httpx.get(f"{url}/studies").status_code == 200
    assert httpx.get(f"{url}/worklist").status_code == 200
    assert httpx.get(f"http://localhost:{url.rsplit(':', 1)[1]}/studies").status_code == 200


def test_without_authentication_a_cross_site_form_still_changes_nothing(
    shipped: tuple[list[AuthFailure], str],
) -> None:
    refusals, url = shipped
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    cross_site = httpx.post(
        f"{url}/jobs/1/retry",
        headers={**form, "Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site"},
        content=b"x=1",
    )
    by_origin = httpx.post(
        f"{url}/jobs/1/retry", headers={**form, "Origin": "null"}, content=b"x=1"
    )
    from_a_script = httpx.post(f"{url}/jobs/1/retry")  # the CLI, curl: no browser marks

    assert (cross_site.status_code, by_origin.status_code) == (403, 403)
    assert from_a_script.status_code == 409  # let through; there is no failed job 1
    assert [f.describe()[:35] for f in refusals] == ["403 cross_site: POST /jobs/1/retry "] * 2


def test_without_authentication_another_host_is_still_refused(
    shipped: tuple[list[AuthFailure], str],
) -> None:
    _, url = shipped
    rebound = httpx.get(f"{url}/studies", headers={"Host": "attacker.example:8080"})
    assert rebound.status_code == 400
    assert httpx.get(f"{url}/healthz", headers={"Host": "10.0.0.7:8080"}).status_code == 200


def test_refusals_go_to_the_events_table_at_most_so_many_a_minute(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "events.sqlite3")
    now = [1000.0]
    record = RefusalEvents(
        lambda kind, detail: db.record_event(kind, detail=detail),
        per_minute=2,
        clock=lambda: now[0],
    )
    failure = AuthFailure(
        401, RefusalReason.NO_CREDENTIALS, "credentials are required", "GET", "/studies", "10.1.2.3"
    )

    for _ in range(5):
        record(failure)
    now[0] += 61
    record(failure)

    rows = [
        (r["kind"], r["detail"]) for r in db.query("SELECT kind, detail FROM events ORDER BY id")
    ]
    line = "401 no_credentials: GET /studies from 10.1.2.3: credentials are required"
    assert rows == [
        ("http_refused", line),
        ("http_refused", line),
        ("http_refused_suppressed", "3 refusals not recorded"),
        ("http_refused", line),
    ]


def test_a_refusal_is_described_on_one_line_whatever_the_request_held() -> None:
    failure = AuthFailure(
        403,
        RefusalReason.ROLE,
        "needs\nadmin",
        "POST",
        "/jobs/1\n200 ok: GET /forged",
        "10.1.2.3",
        principal="eve\r\n",
    )
    assert "\n" not in failure.describe() and "\r" not in failure.describe()


@pytest.mark.parametrize(("secret", "status"), [("s3cret:/+", 200), ("wrong", 502)])
def test_a_confidential_client_sends_its_secret_to_the_token_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str, status: int
) -> None:
    from router.api.sessions import SESSION_COOKIE, SIGN_IN_COOKIE

    monkeypatch.setenv("TEST_OIDC_SECRET", secret)
    with running_identity_provider(client_secret="s3cret:/+") as provider:
        http = http_config(provider, tmp_path)
        assert http.auth is not None and http.auth.oidc is not None
        oidc = http.auth.oidc.model_copy(update={"client_secret_env": "TEST_OIDC_SECRET"})
        http = http.model_copy(update={"auth": http.auth.model_copy(update={"oidc": oidc})})
        refused: list[AuthFailure] = []
        client = TestClient(
            app_with(tmp_path, HttpSecurity.from_config(http, on_refused=refused.append))
        )
        login = client.get("/auth/login", follow_redirects=False)
        back = httpx.get(login.headers["location"], timeout=10).headers["location"]
        client.cookies.set(SIGN_IN_COOKIE, login.cookies[SIGN_IN_COOKIE])

        answer = client.get(back.replace("http://testserver", ""), follow_redirects=False)

        assert answer.status_code == status, answer.text
        assert (SESSION_COOKIE in answer.cookies) is (status == 200)
        assert [f.reason for f in refused] == ([] if status == 200 else [RefusalReason.SIGN_IN])
