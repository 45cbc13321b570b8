"""The gate in front of the HTTP API: Host check, cross-site check, credentials, role.

Every request passes through ``SecurityGate`` (an ASGI middleware) in this order:

1. its ``Host`` must be one of ``http.allowed_hosts`` (DNS rebinding), else 400;
2. an unsafe request (POST, ...) a browser marks as coming from another site or origin
   (``Sec-Fetch-Site``, ``Origin``) is refused, 403, whatever its credentials;
3. unless the endpoint is public (``router.api.access``), the credentials are checked: an
   OIDC bearer token, an API key (``Authorization: Bearer`` or ``X-API-Key``) or the worklist
   page's session cookie; none, 401 (a browser opening a page is sent to the sign-in instead);
4. the principal's role must include the one the endpoint needs, else 403;
5. an unsafe request made with the session cookie must carry the session's CSRF token in
   ``X-CSRF-Token``, else 403. Bearer tokens and API keys travel in headers a cross-site form
   cannot set, and a cross-site script cannot send them without a CORS preflight this server
   never grants.

Every refusal (and every failed sign-in) is an ``AuthFailure`` passed to ``on_refused``, an
observer: its errors are logged, never turned into a response. Without ``http.auth``, steps 3
to 5 are skipped (the loopback-only development mode ``/readyz`` calls insecure).
"""

from __future__ import annotations

import enum
import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.schema import ApiRole, HttpConfig, OidcConfig
from router.api.access import (
    PRINCIPAL_SCOPE_KEY,
    Access,
    CredentialKind,
    Principal,
    current_principal,
    needed_for,
    principal_from_claims,
)
from router.api.api_keys import ApiKeyStore, looks_like_api_key
from router.api.sessions import SESSION_COOKIE, Exchange, Session, SessionStore, SignIn
from router.api.tokens import (
    Fetch,
    IdentityProviderUnavailableError,
    TokenRejectedError,
    TokenRules,
    TokenVerifier,
)
from router.logs import log_safe
from router.secrets import read_secret

LOGGER = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PROBES = frozenset({"/healthz", "/readyz"})
"""Answered whatever the Host: load balancers and orchestrators address them by IP."""
CSRF_HEADER = "x-csrf-token"
SESSION_SCOPE_KEY = "radrouter.session"
HSTS = "max-age=31536000"
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class RefusalReason(enum.StrEnum):
    HOST = "host_not_allowed"
    CROSS_SITE = "cross_site"
    CSRF_TOKEN = "csrf_token"
    NO_CREDENTIALS = "no_credentials"
    BAD_TOKEN = "invalid_token"
    BAD_API_KEY = "invalid_api_key"
    BAD_SESSION = "invalid_session"
    IDENTITY_PROVIDER = "identity_provider_unavailable"
    ROLE = "role"
    SIGN_IN = "sign_in_failed"


@dataclass(frozen=True)
class AuthFailure:
    """One refused request: what the audit trail records. Never holds a credential."""

    status: int
    reason: RefusalReason
    detail: str
    method: str
    path: str
    client: str | None
    """The peer's address."""
    principal: str | None = None
    """Who, when the credentials were valid but not enough (a 403)."""
    credential: CredentialKind | None = None
    at: float = field(default_factory=time.time)

    def describe(self) -> str:
        """One line for a log or an audit record; what came from the request is escaped."""
        who = f" as {log_safe(self.principal)}" if self.principal else ""
        via = f" with {self.credential.value}" if self.credential else ""
        return (
            f"{self.status} {self.reason.value}: {log_safe(self.method, 16)} "
            f"{log_safe(self.path)} from {self.client or 'unknown'}{who}{via}: "
            f"{log_safe(self.detail, 400)}"
        )


RefusalHook = Callable[[AuthFailure], None]


def ignore_refusal(_failure: AuthFailure) -> None:
    """The default ``on_refused``: the log line the gate writes anyway is the only record."""


SessionHook = Callable[[Principal, str | None, bool], None]
"""Told (who, from which client address, True: signed in / False: signed out) when the page's
session begins or ends: the audit trail's successful logins and logouts."""


def ignore_session(_principal: Principal, _client: str | None, _signed_in: bool) -> None:
    """The default ``on_session``: nothing beyond the log line."""


class RefusalEvents:
    """An ``on_refused`` that writes an ``http_refused`` row to the events table, at most
    ``per_minute`` a minute (an unauthenticated flood must not fill the disk); the rows not
    written are counted in one ``http_refused_suppressed`` row when the next minute starts."""

    def __init__(
        self,
        record: Callable[[str, str], None],
        *,
        per_minute: int = 120,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._record = record
        self._per_minute = per_minute
        self._clock = clock
        self._window_start = clock()
        self._written = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def __call__(self, failure: AuthFailure) -> None:
        with self._lock:
            now = self._clock()
            suppressed = 0
            if now - self._window_start >= 60.0:
                suppressed, self._suppressed = self._suppressed, 0
                self._window_start, self._written = now, 0
            write = self._written < self._per_minute
            self._written += write
            self._suppressed += not write
        if suppressed:
            self._record("http_refused_suppressed", f"{suppressed} refusals not recorded")
        if write:
            self._record("http_refused", failure.describe())


class HostAllowList:
    """The names requests may be addressed to (``Host``, port ignored); ``*.example.org``
    allows every name under example.org."""

    def __init__(self, names: Iterable[str]) -> None:
        normalised = {name.strip("[]").rstrip(".").lower() for name in names}
        self.exact = frozenset(n for n in normalised if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in normalised if n.startswith("*."))

    @classmethod
    def for_config(cls, http: HttpConfig) -> HostAllowList:
        if http.allowed_hosts is not None:
            return cls(http.allowed_hosts)
        names = set(_LOOPBACK_NAMES)
        if http.host in _WILDCARD_BINDS:
            names.add(socket.gethostname())
        else:
            names.add(http.host)
        return cls(names)

    def allows(self, host_header: str | None) -> bool:
        name = _host_name(host_header)
        if name is None:
            return False
        return name in self.exact or any(name.endswith(suffix) for suffix in self.suffixes)


def _host_name(host_header: str | None) -> str | None:
    """The name in a Host header, lower-case, without port or brackets; None if malformed."""
    if not host_header:
        return None
    value = host_header.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    else:
        name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


class CredentialsRefusedError(Exception):
    """Credentials were given and are not valid (401), or cannot be checked now (503)."""

    def __init__(
        self, status: int, reason: RefusalReason, detail: str, credential: CredentialKind
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.credential = credential


@dataclass(frozen=True)
class Identified:
    principal: Principal
    session: Session | None = None


class Authenticator:
    """Credentials of a request -> the principal they prove, ``None`` when there are none."""

    def __init__(
        self,
        *,
        oidc: OidcConfig | None,
        verifier: TokenVerifier | None,
        api_keys: ApiKeyStore | None,
        sessions: SessionStore | None,
    ) -> None:
        self.oidc = oidc
        self.verifier = verifier
        self.api_keys = api_keys
        self.sessions = sessions

    def authenticate(self, headers: Headers, cookies: Mapping[str, str]) -> Identified | None:
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, credential = authorization.strip().partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                raise CredentialsRefusedError(
                    401,
                    RefusalReason.BAD_TOKEN,
                    "Authorization must be 'Bearer <token or API key>'",
                    CredentialKind.BEARER_TOKEN,
                )
            if looks_like_api_key(credential):
                return self._api_key(credential)
            return self._token(credential)
        api_key = headers.get("x-api-key")
        if api_key is not None:
            return self._api_key(api_key.strip())
        session_id = cookies.get(SESSION_COOKIE)
        if session_id is not None:
            session = self.sessions.get(session_id) if self.sessions is not None else None
            if session is None:
                raise CredentialsRefusedError(
                    401,
                    RefusalReason.BAD_SESSION,
                    "the session has expired or is unknown; sign in again",
                    CredentialKind.SESSION,
                )
            return Identified(session.principal, session)
        return None

    def _token(self, token: str) -> Identified:
        if self.verifier is None or self.oidc is None:
            raise CredentialsRefusedError(
                401,
                RefusalReason.BAD_TOKEN,
                "bearer tokens are not accepted here (no http.auth.oidc)",
                CredentialKind.BEARER_TOKEN,
            )
        rules = TokenRules(
            issuer=self.oidc.issuer,
            audience=self.oidc.audience,
            algorithms=tuple(self.oidc.algorithms),
            leeway_s=self.oidc.leeway_s,
        )
        try:
            claims = self.verifier.verify(token, rules)
        except TokenRejectedError as exc:
            raise CredentialsRefusedError(
                401, RefusalReason.BAD_TOKEN, f"token {exc}", CredentialKind.BEARER_TOKEN
            ) from exc
        except IdentityProviderUnavailableError as exc:
            LOGGER.error("cannot check bearer tokens: %s", exc)
            raise CredentialsRefusedError(
                503,
                RefusalReason.IDENTITY_PROVIDER,
                "the identity provider's keys cannot be fetched",
                CredentialKind.BEARER_TOKEN,
            ) from exc
        return Identified(principal_from_claims(claims, self.oidc, CredentialKind.BEARER_TOKEN))

    def _api_key(self, key: str) -> Identified:
        entry = self.api_keys.check(key) if self.api_keys is not None else None
        if entry is None:
            raise CredentialsRefusedError(
                401,
                RefusalReason.BAD_API_KEY,
                "unknown or revoked API key"
                if self.api_keys is not None
                else "API keys are not accepted here (no http.auth.api_keys_file)",
                CredentialKind.API_KEY,
            )
        principal = Principal(
            subject=f"api-key:{entry.id}",
            name=f"api-key:{entry.name}",
            roles=frozenset({entry.role}),
            credential=CredentialKind.API_KEY,
        )
        return Identified(principal)


class HttpSecurity:
    """What the gate enforces, built once from ``http``; ``on_refused`` is the audit hook."""

    def __init__(
        self,
        *,
        hosts: HostAllowList,
        https: bool,
        authenticator: Authenticator | None = None,
        sign_in: SignIn | None = None,
        metrics_public: bool = False,
        on_refused: RefusalHook = ignore_refusal,
        on_session: SessionHook = ignore_session,
    ) -> None:
        self.hosts = hosts
        self.https = https
        self.authenticator = authenticator
        self.sign_in = sign_in
        self.metrics_public = metrics_public
        self.on_refused = on_refused
        self.on_session = on_session

    @classmethod
    def from_config(
        cls,
        http: HttpConfig,
        *,
        on_refused: RefusalHook = ignore_refusal,
        on_session: SessionHook = ignore_session,
        fetch: Fetch | None = None,
        exchange: Exchange | None = None,
    ) -> HttpSecurity:
        """Raises ``SecretError`` when the client secret the config names is missing."""
        https = http.tls is not None
        hosts = HostAllowList.for_config(http)
        auth = http.auth
        if auth is None:
            return cls(hosts=hosts, https=https, on_refused=on_refused, on_session=on_session)
        oidc = auth.oidc
        verifier = TokenVerifier.for_provider(oidc, fetch) if oidc is not None else None
        sessions: SessionStore | None = None
        sign_in: SignIn | None = None
        if oidc is not None and verifier is not None and oidc.client_id is not None:
            sessions = SessionStore(oidc.session_max_age_s)
            secret = read_secret(
                oidc.client_secret_env, oidc.client_secret_file, "http.auth.oidc client secret"
            )
            sign_in = SignIn(
                oidc, verifier, sessions, client_secret=secret, https=https, exchange=exchange
            )
        authenticator = Authenticator(
            oidc=oidc,
            verifier=verifier,
            api_keys=ApiKeyStore(auth.api_keys_file) if auth.api_keys_file else None,
            sessions=sessions,
        )
        return cls(
            hosts=hosts,
            https=https,
            authenticator=authenticator,
            sign_in=sign_in,
            metrics_public=auth.metrics_public,
            on_refused=on_refused,
            on_session=on_session,
        )

    def session_changed(self, principal: Principal, client: str | None, signed_in: bool) -> None:
        """Log and report a sign-in or sign-out; the hook is an observer."""
        LOGGER.info(
            "%s %s from %s",
            log_safe(principal.name),
            "signed in" if signed_in else "signed out",
            client or "unknown",
        )
        try:
            self.on_session(principal, client, signed_in)
        except Exception:
            LOGGER.exception("the session hook failed")

    def refused(self, failure: AuthFailure) -> None:
        """Log and report a refusal; the hook is an observer and cannot break the answer."""
        LOGGER.warning("HTTP request refused: %s", failure.describe())
        try:
            self.on_refused(failure)
        except Exception:
            LOGGER.exception("the refusal hook failed")

    def routes(self) -> APIRouter:
        """``/auth/session`` (who am I, and the CSRF token); with authentication also
        ``/auth/logout`` and the sign-in."""
        router = APIRouter(include_in_schema=False)

        @router.get("/auth/session")
        def who_am_i(request: Request) -> dict[str, Any]:
            if self.authenticator is None:  # the page then asks the reader for a name
                return {"authentication": False}
            principal = current_principal(request)
            if principal is None:  # the gate lets no one here without credentials
                raise HTTPException(status_code=401, detail="not signed in")
            session = request.scope.get(SESSION_SCOPE_KEY)
            return {
                "authentication": True,
                "user": principal.name,
                "subject": principal.subject,
                "roles": sorted(role.value for role in principal.roles),
                "credential": principal.credential.value,
                "csrf_token": session.csrf_token if isinstance(session, Session) else None,
                "expires_at": session.expires_at if isinstance(session, Session) else None,
                "may_give_feedback": principal.may(ApiRole.RADIOLOGIST),
                "may_administer": principal.may(ApiRole.ADMIN),
            }

        if self.authenticator is None:
            return router
        sessions = self.authenticator.sessions

        @router.post("/auth/logout")
        def sign_out(request: Request) -> Response:
            session_id = request.cookies.get(SESSION_COOKIE)
            if session_id and sessions is not None:
                sessions.drop(session_id)
                principal = current_principal(request)
                if principal is not None and principal.credential is CredentialKind.SESSION:
                    client = request.client.host if request.client else None
                    self.session_changed(principal, client, False)
            response = JSONResponse({"signed_out": True})
            response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True)
            return response

        if self.sign_in is not None:

            def sign_in_failed(request: Request, status: int, why: str) -> None:
                self.refused(
                    AuthFailure(
                        status,
                        RefusalReason.SIGN_IN,
                        why,
                        request.method,
                        request.url.path,
                        request.client.host if request.client else None,
                    )
                )

            def signed_in(request: Request, principal: Principal) -> None:
                client = request.client.host if request.client else None
                self.session_changed(principal, client, True)

            router.include_router(self.sign_in.router(sign_in_failed, signed_in))
        return router


class SecurityGate:
    """The ASGI middleware that applies ``HttpSecurity`` to every HTTP request."""

    def __init__(self, app: ASGIApp, security: HttpSecurity) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        method = request.method
        path = _route_path(scope)
        security = self.security
        refusal = _Refusal(request, method, path)
        if path not in PROBES and not security.hosts.allows(request.headers.get("host")):
            failure = refusal(400, RefusalReason.HOST, "the Host header names another server")
            await self._refuse(failure, scope, receive, send)
            return
        unsafe = method not in SAFE_METHODS
        if unsafe and (why := _cross_site(request, security.https)) is not None:
            await self._refuse(refusal(403, RefusalReason.CROSS_SITE, why), scope, receive, send)
            return
        needed = needed_for(method, path, metrics_public=security.metrics_public)
        authenticator = security.authenticator
        if needed is Access.PUBLIC or authenticator is None:
            await self._pass(scope, receive, send)
            return
        try:
            identified = await run_in_threadpool(
                authenticator.authenticate, request.headers, request.cookies
            )
        except CredentialsRefusedError as exc:
            failure = refusal(exc.status, exc.reason, exc.detail, credential=exc.credential)
            await self._refuse(failure, scope, receive, send)
            return
        if identified is None:
            if security.sign_in is not None and _opens_a_page(request, needed):
                query = scope.get("query_string", b"").decode("latin-1")
                target = security.sign_in.login_url(path + (f"?{query}" if query else ""))
                await self._pass(scope, receive, send, RedirectResponse(target, status_code=303))
                return
            failure = refusal(401, RefusalReason.NO_CREDENTIALS, "credentials are required")
            await self._refuse(failure, scope, receive, send)
            return
        principal = identified.principal
        allowed = principal.may(needed) if isinstance(needed, ApiRole) else bool(principal.roles)
        if not allowed:
            needs = needed.value if isinstance(needed, ApiRole) else "any radrouter"
            failure = refusal(
                403,
                RefusalReason.ROLE,
                f"needs the {needs} role; has {sorted(r.value for r in principal.roles) or 'none'}",
                principal=principal,
            )
            await self._refuse(failure, scope, receive, send)
            return
        session = identified.session
        if unsafe and session is not None:
            token = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(token.encode(), session.csrf_token.encode()):
                failure = refusal(
                    403,
                    RefusalReason.CSRF_TOKEN,
                    f"a request with the session cookie needs the session's {CSRF_HEADER}",
                    principal=principal,
                )
                await self._refuse(failure, scope, receive, send)
                return
        scope[PRINCIPAL_SCOPE_KEY] = principal
        scope[SESSION_SCOPE_KEY] = session
        await self._pass(scope, receive, send)

    async def _pass(
        self, scope: Scope, receive: Receive, send: Send, response: Response | None = None
    ) -> None:
        """Answer with ``response``, or the app's; over HTTPS with an HSTS header."""
        if self.security.https:
            plain_send = send

            async def send_with_hsts(message: Message) -> None:
                if message["type"] == "http.response.start":
                    MutableHeaders(scope=message).append("Strict-Transport-Security", HSTS)
                await plain_send(message)

            send = send_with_hsts
        if response is not None:
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _refuse(
        self, failure: AuthFailure, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.security.refused(failure)
        headers = {"Cache-Control": "no-store"}
        if failure.status == 401:
            error = (
                ', error="invalid_token"'
                if failure.reason is not RefusalReason.NO_CREDENTIALS
                else ""
            )
            headers["WWW-Authenticate"] = f'Bearer realm="radrouter"{error}'
        response = JSONResponse(
            {"detail": failure.detail}, status_code=failure.status, headers=headers
        )
        await self._pass(scope, receive, send, response)


@dataclass(frozen=True)
class _Refusal:
    """Makes the ``AuthFailure`` of one request."""

    request: Request
    method: str
    path: str

    def __call__(
        self,
        status: int,
        reason: RefusalReason,
        detail: str,
        *,
        principal: Principal | None = None,
        credential: CredentialKind | None = None,
    ) -> AuthFailure:
        client = self.request.client
        return AuthFailure(
            status=status,
            reason=reason,
            detail=detail,
            method=self.method,
            path=self.path,
            client=client.host if client else None,
            principal=principal.name if principal else None,
            credential=principal.credential if principal else credential,
        )


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return (path[len(root) :] or "/") if root and path.startswith(root) else path


def _cross_site(request: Request, https: bool) -> str | None:
    """Why an unsafe request is from another site or origin, or None. Browsers mark their
    requests (``Sec-Fetch-Site``, ``Origin`` on every cross-origin POST); a client that is not
    a browser sends neither, and is judged by its credentials alone."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"a state change from another origin (Sec-Fetch-Site: {fetch_site[:32]})"
    origin = request.headers.get("origin")
    if origin is not None and _origin(origin) != _origin(
        ("https" if https else "http") + "://" + request.headers.get("host", "")
    ):
        return f"a state change from another origin ({origin[:100]})"
    return None


def _origin(value: str) -> str:
    """scheme://host[:port] in lower case, without the scheme's default port."""
    value = value.strip().lower().rstrip("/")
    for scheme, port in (("https://", ":443"), ("http://", ":80")):
        if value.startswith(scheme) and value.endswith(port):
            return value[: -len(port)]
    return value


def _opens_a_page(request: Request, needed: ApiRole | Access) -> bool:
    """A browser navigating to a page (not a script fetching JSON): send it to the sign-in."""
    return (
        request.method in ("GET", "HEAD")
        and needed is not Access.SIGNED_IN
        and "text/html" in request.headers.get("accept", "")
        and request.headers.get("sec-fetch-mode", "navigate") == "navigate"
    )


def document_security(app: FastAPI) -> None:
    """Name the credentials in the OpenAPI description, so Swagger UI's "Authorize" takes a
    token or an API key for "Try it out"."""
    described = app.openapi

    def openapi() -> dict[str, Any]:
        schema = described()  # FastAPI builds it once and keeps it
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An OpenID Connect access token, or an API key",
            },
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        schema["security"] = [{"bearer": []}, {"apiKey": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
