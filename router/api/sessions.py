"""The worklist page's sign-in: OpenID Connect authorization code flow with PKCE, run by the
server, and the session cookie it ends in.

Why on the server and not in the page's JavaScript: the browser never holds a token, only an
HttpOnly, Secure, SameSite=Strict cookie naming a session that lives in this process; a script
injected into the page could use the session while the page is open but could not carry a
token away. The flow: ``/auth/login`` makes a state, a nonce and a PKCE verifier, binds them to
this browser with a short-lived cookie and sends the browser to the provider; the provider
sends it back to ``/auth/callback`` with a code, which radrouter exchanges (with the verifier)
for an ID token, checks it (signature, issuer, audience = client_id, expiry, nonce) and opens a
session with the roles its claims map to. Unsafe requests made with the cookie also need the
session's CSRF token in ``X-CSRF-Token`` (``/auth/session`` gives it to the page).

Sessions are kept in memory: a restart signs everyone out (the provider's own session usually
signs them in again without a password).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import secrets
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse

from config.schema import OidcConfig
from router.api.access import CredentialKind, Principal, principal_from_claims
from router.api.tokens import (
    IdentityProviderUnavailableError,
    TokenRejectedError,
    TokenRules,
    TokenVerifier,
)

SESSION_COOKIE = "__Host-radrouter-session"
"""``__Host-``: the browser keeps it only if Secure, for this host alone, for every path."""
SIGN_IN_COOKIE = "__Host-radrouter-sign-in"
SIGN_IN_TTL_S = 600.0
MAX_SESSIONS = 10_000
MAX_PENDING_SIGN_INS = 10_000
DEFAULT_NEXT = "/worklist"
_LOCAL_PATH = re.compile(r"^/(?![/\\])[A-Za-z0-9/_.~-]*$")
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf_token: str
    expires_at: float


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class SessionStore:
    """Open sessions by a hash of their cookie; expired ones are dropped when met, the oldest
    when there are too many. Thread-safe."""

    def __init__(self, max_age_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, principal: Principal) -> tuple[str, Session]:
        """A new session; returns the cookie value (shown to this browser only) and it."""
        session_id = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), self._clock() + self.max_age_s)
        with self._lock:
            self._sessions[_hash(session_id)] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str) -> Session | None:
        key = _hash(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and session.expires_at <= self._clock():
                del self._sessions[key]
                return None
            return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(_hash(session_id), None)


@dataclass(frozen=True)
class _PendingSignIn:
    binding: str
    """Hash of the sign-in cookie: the callback must come to the browser that started it."""
    verifier: str
    nonce: str
    next_path: str
    redirect_uri: str
    started_at: float


Exchange = Callable[[str, Mapping[str, str], tuple[str, str] | None], Mapping[str, Any]]
"""POST a form to the token endpoint (with HTTP Basic client credentials or none); its JSON."""


def exchange_code(ca_file: Path | None) -> Exchange:
    def post(url: str, form: Mapping[str, str], basic: tuple[str, str] | None) -> Mapping[str, Any]:
        response = requests.post(
            url,
            data=dict(form),
            auth=basic,
            headers={"Accept": "application/json"},
            timeout=10,
            verify=str(ca_file) if ca_file else True,
        )
        if response.status_code != 200:
            raise IdentityProviderUnavailableError(
                f"the token endpoint answered {response.status_code}"
            )
        body = response.json()
        if not isinstance(body, dict):
            raise IdentityProviderUnavailableError("the token endpoint did not answer an object")
        return body

    return post


SignInRefused = Callable[[Request, int, str], None]
SignedIn = Callable[[Request, Principal], None]
"""Told of every sign-in that failed: the request, the status answered and why."""


class SignIn:
    """The sign-in routes and the sessions they open, for one identity provider client."""

    def __init__(
        self,
        oidc: OidcConfig,
        verifier: TokenVerifier,
        sessions: SessionStore,
        *,
        client_secret: str | None,
        https: bool,
        exchange: Exchange | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if oidc.client_id is None or oidc.authorization_endpoint is None:
            raise ValueError("the sign-in needs oidc.client_id and its endpoints")
        self.oidc = oidc
        self.client_id = oidc.client_id
        self.verifier = verifier
        self.sessions = sessions
        self.client_secret = client_secret
        self.https = https
        self._exchange = exchange or exchange_code(oidc.ca_file)
        self._clock = clock
        self._pending: OrderedDict[str, _PendingSignIn] = OrderedDict()
        self._lock = threading.Lock()

    def login_url(self, next_path: str) -> str:
        return "/auth/login?" + urllib.parse.urlencode({"next": next_path})

    def router(self, refused: SignInRefused, signed_in: SignedIn | None = None) -> APIRouter:
        """``/auth/login`` and ``/auth/callback``; ``refused`` hears of every failed sign-in,
        ``signed_in`` of every session opened."""
        router = APIRouter(prefix="/auth", include_in_schema=False)

        @router.get("/login")
        def login(request: Request, next_path: str = Query(DEFAULT_NEXT, alias="next")) -> Response:
            return self._start(request, next_path)

        @router.get("/callback")
        def callback(request: Request) -> Response:
            return self._finish(request, refused, signed_in)

        return router

    # --- the two legs of the flow ---------------------------------------------------------

    def _start(self, request: Request, next_path: str) -> Response:
        state = secrets.token_urlsafe(32)
        binding = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        nonce = secrets.token_urlsafe(32)
        redirect_uri = self.oidc.redirect_uri or _own_origin(request, self.https) + (
            request.scope.get("root_path", "").rstrip("/") + "/auth/callback"
        )
        pending = _PendingSignIn(
            binding=_hash(binding),
            verifier=verifier,
            nonce=nonce,
            next_path=next_path if _LOCAL_PATH.match(next_path) else DEFAULT_NEXT,
            redirect_uri=redirect_uri,
            started_at=self._clock(),
        )
        with self._lock:
            self._pending[state] = pending
            while len(self._pending) > MAX_PENDING_SIGN_INS:
                self._pending.popitem(last=False)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(self.oidc.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge.rstrip(b"=").decode(),
                "code_challenge_method": "S256",
            }
        )
        endpoint = str(self.oidc.authorization_endpoint)
        response = RedirectResponse(
            endpoint + ("&" if "?" in endpoint else "?") + query, status_code=303
        )
        # Lax, not Strict: it must come back with the provider's (cross-site) redirect.
        response.set_cookie(
            SIGN_IN_COOKIE,
            binding,
            max_age=int(SIGN_IN_TTL_S),
            path="/",
            secure=True,
            httponly=True,
            samesite="lax",
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    def _finish(
        self, request: Request, refused: SignInRefused, signed_in: SignedIn | None = None
    ) -> Response:
        query = request.query_params
        with self._lock:
            pending = self._pending.pop(query.get("state", ""), None)
        binding = request.cookies.get(SIGN_IN_COOKIE, "")
        if (
            pending is None
            or self._clock() - pending.started_at > SIGN_IN_TTL_S
            or not hmac.compare_digest(pending.binding, _hash(binding))
        ):
            return self._failed(
                request, refused, 400, "This sign-in expired or was not started in this browser."
            )
        if "error" in query:
            reason = re.sub(r"[^A-Za-z0-9_.-]", "?", query.get("error", "")[:64])
            return self._failed(
                request, refused, 401, f"The identity provider refused the sign-in ({reason})."
            )
        form = {
            "grant_type": "authorization_code",
            "code": query.get("code", ""),
            "redirect_uri": pending.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": pending.verifier,
        }
        basic = None
        if self.client_secret is not None:
            quote = urllib.parse.quote
            basic = (quote(self.client_id, safe=""), quote(self.client_secret, safe=""))
        try:
            tokens = self._exchange(str(self.oidc.token_endpoint), form, basic)
            id_token = tokens.get("id_token")
            if not isinstance(id_token, str):
                raise TokenRejectedError("the provider sent no ID token")
            claims = self.verifier.verify(
                id_token,
                TokenRules(
                    issuer=self.oidc.issuer,
                    audience=self.client_id,
                    algorithms=tuple(self.oidc.algorithms),
                    leeway_s=self.oidc.leeway_s,
                ),
                nonce=pending.nonce,
            )
        except (IdentityProviderUnavailableError, requests.RequestException, ValueError) as exc:
            return self._failed(
                request, refused, 502, f"The identity provider could not be asked: {exc}"
            )
        except TokenRejectedError as exc:
            return self._failed(
                request, refused, 401, f"The identity provider's answer was not valid: {exc}."
            )
        principal = principal_from_claims(claims, self.oidc, CredentialKind.SESSION)
        if not principal.roles:
            return self._failed(
                request,
                refused,
                403,
                f"You are signed in as {principal.name}, but have no radrouter role. Ask the "
                "administrator for one.",
            )
        session_id, session = self.sessions.create(principal)
        if signed_in is not None:
            signed_in(request, principal)
        # A page that moves on by itself rather than a redirect: the navigation it starts is
        # this site's own, so the browser sends the SameSite=Strict cookie with it.
        target = html.escape(pending.next_path, quote=True)
        response = _page(
            200,
            "Signed in",
            f'<meta http-equiv="refresh" content="0;url={target}">',
            f'<p>Signed in as {html.escape(principal.name)}. <a href="{target}">Continue</a>.</p>',
        )
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=int(session.expires_at - self._clock()),
            path="/",
            secure=True,
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(SIGN_IN_COOKIE, path="/", secure=True, httponly=True)
        return response

    def _failed(self, request: Request, refused: SignInRefused, status: int, why: str) -> Response:
        refused(request, status, why)
        again = html.escape(self.login_url(DEFAULT_NEXT), quote=True)
        return _page(
            status,
            "Sign-in failed",
            "",
            f'<p>{html.escape(why)}</p><p><a href="{again}">Sign in again</a>.</p>',
        )


def _own_origin(request: Request, https: bool) -> str:
    return ("https" if https else "http") + "://" + request.headers.get("host", "")


def _page(status: int, title: str, head: str, body: str) -> Response:
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>radrouter · {html.escape(title)}</title>{head}</head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )
    return Response(
        page, status_code=status, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS
    )
