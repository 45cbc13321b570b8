"""Who may call what: the principal a request acts as, and the role each endpoint needs.

One table decides for the whole HTTP API (the JSON endpoints, the worklist page and the docs),
so the policy reads in one place. A path the table does not name needs ``admin``: an endpoint
added without a thought about access is closed, not open.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from config.schema import ApiRole, OidcConfig


class CredentialKind(enum.StrEnum):
    """How a request proved who it is."""

    BEARER_TOKEN = "bearer_token"
    """An OpenID Connect access token (JWT) in ``Authorization: Bearer``."""
    API_KEY = "api_key"
    """A machine's key, in ``Authorization: Bearer`` or ``X-API-Key``."""
    SESSION = "session"
    """The worklist page's session cookie, set by the sign-in."""


@dataclass(frozen=True)
class Principal:
    """A person or machine whose credentials were checked."""

    subject: str
    """Stable identifier: the token's ``sub``, the API key's id."""
    name: str
    """What feedback and audit records call them (``user_claim``, ``api-key:<name>``)."""
    roles: frozenset[ApiRole]
    credential: CredentialKind

    def may(self, needed: ApiRole) -> bool:
        return any(role.includes(needed) for role in self.roles)


PRINCIPAL_SCOPE_KEY = "radrouter.principal"
"""Where the gate (``router.api.auth``) leaves the principal in a request's ASGI scope."""


def current_principal(request: Request) -> Principal | None:
    """Who the request acts as; None when the API runs without authentication."""
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else None


def principal_from_claims(
    claims: Mapping[str, Any], oidc: OidcConfig, credential: CredentialKind
) -> Principal:
    """The principal a verified token names: ``sub``, the ``user_claim`` (else ``sub``), and
    the radrouter roles its ``role_claim`` values map to (none when nothing maps)."""
    subject = str(claims["sub"])
    name = claim(claims, oidc.user_claim)
    values = claim(claims, oidc.role_claim)
    if isinstance(values, str):
        values = [values]
    roles = frozenset(
        oidc.role_map[value]
        for value in (values if isinstance(values, list) else [])
        if isinstance(value, str) and value in oidc.role_map
    )
    return Principal(
        subject=subject,
        name=name if isinstance(name, str) and name.strip() else subject,
        roles=roles,
        credential=credential,
    )


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted claim path (``realm_access.roles``), or None. A claim whose own
    name has a dot (``https://example.org/roles``) is found first."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


class Access(enum.Enum):
    """What a request needs beyond its role: nothing (public) or a principal."""

    PUBLIC = "public"
    """No credentials: probes, the sign-in itself, the icon."""
    SIGNED_IN = "signed_in"
    """Any principal with at least one role (who am I, sign out)."""


Needed = ApiRole | Access

_GET = frozenset({"GET", "HEAD"})
_POST = frozenset({"POST"})
# (methods, path pattern, what is needed), first match wins; paths as the app routes them.
_POLICY: tuple[tuple[frozenset[str], re.Pattern[str], Needed], ...] = tuple(
    (methods, re.compile(pattern), needed)
    for methods, pattern, needed in (
        (_GET, r"/healthz", Access.PUBLIC),
        (_GET, r"/readyz", Access.PUBLIC),
        (_GET, r"/favicon\.ico", Access.PUBLIC),
        (_GET, r"/auth/login", Access.PUBLIC),
        (_GET, r"/auth/callback", Access.PUBLIC),
        (_GET, r"/auth/session", Access.SIGNED_IN),
        (_POST, r"/auth/logout", Access.SIGNED_IN),
        # Metrics: counts by state and latencies, no patient data; public when configured.
        (_GET, r"/metrics", ApiRole.VIEWER),
        # The pages and the API description.
        (_GET, r"/", ApiRole.VIEWER),
        (_GET, r"/docs", ApiRole.VIEWER),
        (_GET, r"/redoc", ApiRole.VIEWER),
        (_GET, r"/openapi\.json", ApiRole.VIEWER),
        (_GET, r"/docs/assets/[^/]+", ApiRole.VIEWER),
        (_GET, r"/worklist", ApiRole.VIEWER),
        (_GET, r"/worklist/assets/[^/]+", ApiRole.VIEWER),
        # The worklist and the studies.
        (_GET, r"/api/worklist", ApiRole.VIEWER),
        (_GET, r"/api/results/[^/]+/thumbnail\.png", ApiRole.VIEWER),
        (_GET, r"/api/results/[^/]+/findings/[^/]+/slices", ApiRole.VIEWER),
        (_GET, r"/studies", ApiRole.VIEWER),
        (_GET, r"/studies/[^/]+", ApiRole.VIEWER),
        # Feedback: the reader is the principal, never a name in the body.
        (_POST, r"/api/results/[^/]+/feedback", ApiRole.RADIOLOGIST),
        # Drift monitoring and recording its baseline (router/drift): the AI governance's.
        (_GET, r"/api/drift", ApiRole.ADMIN),
        (_POST, r"/api/drift/[^/]+/baseline", ApiRole.ADMIN),
        # Everything else (jobs, dispatches, deliveries, their retries, the feedback
        # export) falls through to admin.
    )
)


def needed_for(method: str, path: str, *, metrics_public: bool = False) -> Needed:
    """What a request for ``path`` with ``method`` needs; ``admin`` for anything not listed."""
    if metrics_public and method in _GET and path == "/metrics":
        return Access.PUBLIC
    for methods, pattern, needed in _POLICY:
        if method in methods and pattern.fullmatch(path):
            return needed
    return ApiRole.ADMIN
