"""A running router with authentication on, trusting a test identity provider, with two API
keys and studies whose jobs failed and succeeded; and the sign-in flow a browser would run."""

from __future__ import annotations

import http.cookies
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from algorithms.registry import Registry
from config.loader import parse_config
from config.schema import ApiRole
from router.api.api_keys import create_key
from router.api.auth import AuthFailure
from router.api.sessions import SESSION_COOKIE, SIGN_IN_COOKIE
from router.service import RouterService, wait_for
from testing.identity_provider import IdentityProvider, SignInUser
from testing.orthanc import free_port
from testing.plugins import AlwaysNegative, CrashingAlgorithm
from testing.router_process import RouterUnderTest, storescu, study_uid_of, write_series

REGISTRY = Registry({"crashing": CrashingAlgorithm, "always_negative": AlwaysNegative})
RULES = (
    "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, hard_cap_s: 60}\n"
    "jobs: {retry: {max_attempts: 1}}\n"
    "rules:\n"
    "  - name: crash\n"
    "    when: {CallingAE: CRASH}\n"
    "    run: crashing\n"
    "  - name: negative\n"
    "    when: {Modality: CT}\n"
    "    run: always_negative\n"
)


@dataclass
class SecuredRouter:
    service: RouterService
    idp: IdentityProvider
    url: str
    admin_key: str
    viewer_key: str
    keys_file: Path
    refusals: list[AuthFailure] = field(default_factory=list)
    failed_jobs: list[int] = field(default_factory=list)
    result_id: int = 0
    verify: ssl.SSLContext | bool = True
    """What a client trusts for the router's https (the test CA)."""

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, verify=self.verify, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, verify=self.verify, **kwargs)

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def router_yaml(idp: IdentityProvider, keys_file: Path, *, http_extra: str = "") -> str:
    return (
        f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {free_port()}}}\n"
        "http:\n"
        "  host: 127.0.0.1\n"
        "  port: 0\n"
        f"{http_extra}"
        "  auth:\n"
        f"    api_keys_file: {keys_file}\n"
        f"    oidc: {idp.oidc_yaml()}\n"
        f"{RULES}"
    )


@contextmanager
def secured_router(
    folder: Path, idp: IdentityProvider, *, http_extra: str = "", ca_file: Path | None = None
) -> Iterator[SecuredRouter]:
    """Started, with a study whose job failed (twice: two jobs) and one with a result."""
    keys_file = folder / "api-keys.json"
    admin_key, _ = create_key(keys_file, name="ris-bridge", role=ApiRole.ADMIN)
    viewer_key, _ = create_key(keys_file, name="monitor", role=ApiRole.VIEWER)
    config = parse_config(router_yaml(idp, keys_file, http_extra=http_extra), "secured.yaml")
    service = RouterService(config, data_dir=folder / "data", registry=REGISTRY)
    recorder = service.on_http_refused  # the audit trail's, or the events table's
    refusals: list[AuthFailure] = []

    def observe(failure: AuthFailure) -> None:
        refusals.append(failure)
        recorder(failure)

    service.on_http_refused = observe
    service.start()
    try:
        assert service.http_port is not None
        secured = SecuredRouter(
            service,
            idp,
            f"{'https' if config.http.tls else 'http'}://127.0.0.1:{service.http_port}",
            admin_key,
            viewer_key,
            keys_file,
            refusals,
            verify=ssl.create_default_context(cafile=str(ca_file)) if ca_file else True,
        )
        under_test = RouterUnderTest(service, service.node.port, service.http_port)
        admin = {"X-API-Key": admin_key}
        for number, calling in enumerate(("CRASH", "CRASH", "PACS")):
            paths = write_series(folder / f"study-{number}")
            storescu(under_test, paths, calling=calling)
            study_uid = study_uid_of(paths)
            view: dict[str, Any] = {}

            def processed(uid: str = study_uid) -> bool:
                nonlocal view
                view = secured.get(f"/studies/{uid}", headers=admin).json()
                jobs = view.get("jobs", [])
                return bool(jobs) and all(j["state"] in ("done", "failed") for j in jobs)

            assert wait_for(processed, 60, 0.1), f"study not processed: {view}"
            if calling == "CRASH":
                secured.failed_jobs.append(int(view["jobs"][0]["id"]))
            else:
                secured.result_id = int(view["results"][0]["id"])
        refusals.clear()
        yield secured
    finally:
        service.stop()


# --------------------------------------------------------------------------------------------
# The sign-in, as a browser runs it (cookies handled by hand: the router speaks plain HTTP on
# loopback here, and httpx keeps Secure cookies for https only).


@dataclass(frozen=True)
class SignedIn:
    cookie: str
    """The session cookie's value."""
    attributes: http.cookies.Morsel[str]
    csrf_token: str
    session: dict[str, Any]

    @property
    def cookies(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}"}

    def unsafe(self) -> dict[str, str]:
        """The headers the page sends with a state change."""
        return {**self.cookies, "X-CSRF-Token": self.csrf_token}


def set_cookies(response: httpx.Response) -> dict[str, http.cookies.Morsel[str]]:
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    return dict(jar)


def start_sign_in(router_url: str, next_path: str = "/worklist") -> tuple[str, str]:
    """``/auth/login``: the provider's authorization URL and the sign-in cookie's value."""
    login = httpx.get(f"{router_url}/auth/login", params={"next": next_path}, timeout=10)
    assert login.status_code == 303, login.text
    return login.headers["location"], set_cookies(login)[SIGN_IN_COOKIE].value


def callback_url(authorization_url: str) -> str:
    """What the provider sends the browser back to."""
    answer = httpx.get(authorization_url, timeout=10)
    assert answer.status_code == 302, answer.text
    return str(answer.headers["location"])


def sign_in(
    router_url: str,
    idp: IdentityProvider,
    user: SignInUser,
    tamper: Callable[[str], str] = lambda url: url,
) -> SignedIn:
    idp.user = user
    authorization, binding = start_sign_in(router_url)
    back = httpx.get(
        tamper(callback_url(authorization)),
        headers={"Cookie": f"{SIGN_IN_COOKIE}={binding}"},
        timeout=30,
    )
    assert back.status_code == 200, back.text
    morsel = set_cookies(back)[SESSION_COOKIE]
    session = httpx.get(
        f"{router_url}/auth/session",
        headers={"Cookie": f"{SESSION_COOKIE}={morsel.value}"},
        timeout=10,
    ).json()
    return SignedIn(morsel.value, morsel, session["csrf_token"], session)
