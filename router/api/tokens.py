"""OpenID Connect tokens (JWT): the provider's keys (JWKS) and the checks a token must pass.

PyJWT does the signature and the registered claims (``exp``, ``nbf``, ``iss``, ``aud``);
this module decides which key and algorithm it may use. Only the configured asymmetric
algorithms are accepted, the key comes from the provider's JWKS by the token's ``kid`` and
must be of that algorithm's type and curve, and the key is bound to the algorithm before
PyJWT sees it. So ``alg: none`` and "HS256 signed with the public key" fail before any
cryptography runs, whatever the token's header says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import requests

from config.schema import OidcConfig

LOGGER = logging.getLogger(__name__)

MIN_REFRESH_INTERVAL_S = 10.0
"""An unknown ``kid`` fetches the keys again at most this often, so tokens with made-up key
ids cannot make radrouter flood the identity provider."""
FETCH_TIMEOUT_S = 10.0
_KEY_TYPES = {"RS": ("RSA", None), "PS": ("RSA", None), "Ed": ("OKP", "Ed25519")}
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class TokenRejectedError(Exception):
    """The token is not valid here; ``str()`` says why without quoting the token."""


class IdentityProviderUnavailableError(Exception):
    """The provider's keys could not be fetched and none are cached: no token can be checked."""


Fetch = Callable[[str], Mapping[str, Any]]
"""GET a URL and return its JSON object (the JWKS document)."""


def fetch_json(ca_file: Path | None) -> Fetch:
    """A ``Fetch`` over HTTPS that trusts ``ca_file`` (the system's CAs when None)."""

    def fetch(url: str) -> Mapping[str, Any]:
        try:
            response = requests.get(
                url, timeout=FETCH_TIMEOUT_S, verify=str(ca_file) if ca_file else True
            )
            response.raise_for_status()
            body = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise IdentityProviderUnavailableError(f"{url}: {exc}") from exc
        if not isinstance(body, dict):
            raise IdentityProviderUnavailableError(f"{url} did not answer with a JSON object")
        return body

    return fetch


class JwksCache:
    """The provider's signing keys by ``kid``: fetched when first needed, kept for
    ``max_age_s``, fetched again at once when a token names a key not yet known (a rotated
    key), at most every ``MIN_REFRESH_INTERVAL_S``. Thread-safe."""

    def __init__(
        self, url: str, fetch: Fetch, *, max_age_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._max_age_s = max_age_s
        self._clock = clock
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: float | None = None
        self._tried_at: float | None = None
        self._lock = threading.Lock()

    def key(self, kid: str | None) -> dict[str, Any]:
        """The JWK named ``kid`` (or the only signing key, when the token names none)."""
        with self._lock:
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at > self._max_age_s
            may_fetch = self._tried_at is None or now - self._tried_at >= MIN_REFRESH_INTERVAL_S
            if may_fetch and (stale or self._find(kid) is None):
                self._refresh(now)  # stale, or a key rotated in since the last fetch
            if not self._keys:
                raise IdentityProviderUnavailableError(f"no signing keys from {self.url} yet")
            found = self._find(kid)
        if found is None:
            raise TokenRejectedError("signed with a key the identity provider does not publish")
        return found

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is not None:
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    def _refresh(self, now: float) -> None:
        self._tried_at = now
        try:
            document = self._fetch(self.url)
        except IdentityProviderUnavailableError as exc:
            # Keep checking tokens with the keys we have (if any) and try again later.
            LOGGER.warning("could not fetch the identity provider's keys: %s", exc)
            return
        listed = document.get("keys")
        keys = {
            str(jwk.get("kid", f"#{number}")): jwk
            for number, jwk in enumerate(listed if isinstance(listed, list) else [])
            if isinstance(jwk, dict) and jwk.get("use", "sig") == "sig"
        }
        if not keys:
            LOGGER.warning("%s lists no signing key; keeping the keys fetched before", self.url)
            return
        self._keys = keys
        self._fetched_at = now
        LOGGER.info("fetched %d signing key(s) from the identity provider", len(keys))


@dataclass(frozen=True)
class TokenRules:
    """What a token must show: issuer, audience, algorithms, clock skew."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    leeway_s: float


class TokenVerifier:
    """Checks a JWT's signature against the provider's keys and its claims against ``rules``;
    returns the claims."""

    def __init__(self, jwks: JwksCache) -> None:
        self.jwks = jwks

    @classmethod
    def for_provider(cls, oidc: OidcConfig, fetch: Fetch | None = None) -> TokenVerifier:
        return cls(
            JwksCache(oidc.jwks_url, fetch or fetch_json(oidc.ca_file), max_age_s=oidc.jwks_cache_s)
        )

    def verify(self, token: str, rules: TokenRules, *, nonce: str | None = None) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejectedError("not a well-formed JWT") from exc
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in rules.algorithms:
            raise TokenRejectedError(
                f"algorithm {str(algorithm)[:16]!r} is not allowed (allowed: "
                f"{', '.join(rules.algorithms)})"
            )
        kid = header.get("kid")
        jwk = self.jwks.key(kid if isinstance(kid, str) else None)
        key = _bound_key(jwk, algorithm)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=rules.audience,
                issuer=rules.issuer,
                leeway=rules.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejectedError("expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenRejectedError("not valid yet (nbf or iat in the future)") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRejectedError("issued for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRejectedError("issued by another issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejectedError(f"lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenRejectedError("signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise TokenRejectedError(f"invalid: {type(exc).__name__}") from exc
        if nonce is not None and claims.get("nonce") != nonce:
            raise TokenRejectedError("nonce does not match the sign-in")
        return claims


def _bound_key(jwk: Mapping[str, Any], algorithm: str) -> jwt.PyJWK:
    """The JWK as a key for ``algorithm`` only; refused unless its type (and curve) fit."""
    if _EC_CURVES.get(algorithm):
        expected: tuple[str, str | None] = ("EC", _EC_CURVES[algorithm])
    else:
        expected = _KEY_TYPES[algorithm[:2]]
    kty, crv = expected
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise TokenRejectedError(f"the key it names is not a {algorithm} key")
    if jwk.get("alg") not in (None, algorithm):
        raise TokenRejectedError(f"the key it names is for {jwk.get('alg')}, not {algorithm}")
    try:
        return jwt.PyJWK(dict(jwk), algorithm=algorithm)
    except jwt.PyJWTError as exc:
        raise TokenRejectedError(f"the key it names is unusable: {type(exc).__name__}") from exc
