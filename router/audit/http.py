"""The HTTP API for the audit trail: who made a request, and its refusals."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from starlette.requests import Request

from router.api.access import Principal, current_principal
from router.api.auth import AuthFailure, RefusalReason
from router.audit.events import (
    ANONYMOUS,
    Actor,
    AuditRecorder,
    RestrictedFunctionRefused,
    UserAuthenticated,
)


def request_actor(request: Request) -> Actor:
    """The principal the HTTP gate authenticated (its name and roles), from the client's
    address; without authentication, ``anonymous`` from that address."""
    host = request.client.host if request.client is not None else None
    principal = current_principal(request)
    if principal is None:
        return Actor.anonymous(host)
    return Actor(principal.name, tuple(sorted(role.value for role in principal.roles)), host)


class AuditRefusals:
    """The HTTP gate's ``on_refused`` hook (``router.api.auth``) for the audit trail: a bad or
    missing credential is a refused login (User Authentication failure and a Security Alert),
    a valid one without the role a Security Alert; Host, cross-site and CSRF refusals are
    Security Alerts too. At most ``per_minute`` refusals a minute are recorded (a flood must
    not fill the disk); the next one recorded says how many were not."""

    _LOGIN = frozenset(
        {
            RefusalReason.NO_CREDENTIALS,
            RefusalReason.BAD_TOKEN,
            RefusalReason.BAD_API_KEY,
            RefusalReason.BAD_SESSION,
            RefusalReason.SIGN_IN,
        }
    )

    def __init__(
        self,
        audit: AuditRecorder,
        *,
        per_minute: int = 120,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._written = 0
        self._suppressed = 0

    def __call__(self, failure: AuthFailure) -> None:
        with self._lock:
            now = self._clock()
            if now - self._window_start >= 60.0:
                self._window_start, self._written = now, 0
            if self._written >= self._per_minute:
                self._suppressed += 1
                return
            self._written += 1
            suppressed, self._suppressed = self._suppressed, 0
        reason = failure.describe()
        if suppressed:
            reason += f" ({suppressed} earlier refusal(s) not recorded: rate limit)"
        actor = Actor(failure.principal or ANONYMOUS, (), failure.client)
        if failure.reason in self._LOGIN:
            self._audit.record(UserAuthenticated(actor, True, False, reason, failure.at))
        else:
            self._audit.record(RestrictedFunctionRefused(actor, reason, failure.at))


class AuditSessions:
    """The HTTP gate's ``on_session`` hook (``router.api.auth``): a sign-in to the page and a
    sign-out are User Authentication events (Login, Logout) with the person and their roles."""

    def __init__(self, audit: AuditRecorder) -> None:
        self._audit = audit

    def __call__(self, principal: Principal, client: str | None, signed_in: bool) -> None:
        roles = tuple(sorted(role.value for role in principal.roles))
        self._audit.record(UserAuthenticated(Actor(principal.name, roles, client), signed_in, True))
