"""A throwaway OpenID Connect provider for tests: signing keys made at start, a JWKS, tokens
minted on demand (valid ones and the malformed kinds an attacker would send), and the
authorization code flow with PKCE for the worklist page's sign-in.

It serves on 127.0.0.1 (a free port); ``public_host`` is the name its URLs use, so a test can
put it on another site than the router (``localhost`` against ``127.0.0.1``), as a hospital's
provider is. Never shipped: it checks what radrouter must send, and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

API_AUDIENCE = "radrouter-api"
CLIENT_ID = "radrouter-worklist"
ROLE_CLAIM = "groups"
ROLE_MAP = {
    "pacs-viewers": "viewer",
    "radiologists": "radiologist",
    "radrouter-admins": "admin",
}
"""The role_map a router under test is configured with (provider group -> radrouter role)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """client_secret_basic (RFC 6749 2.3.1): id and secret form-encoded, then HTTP Basic."""
    if authorization is None or not authorization.startswith("Basic "):
        return None
    decoded = base64.b64decode(authorization[6:]).decode()
    client_id, _, secret = decoded.partition(":")
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    user: dict[str, Any]


@dataclass
class SignInUser:
    """Who the provider signs in next: their claims (``sub``, a name, groups)."""

    sub: str = "u-1001"
    preferred_username: str = "dr.house"
    name: str = "Dr. Gregory House"
    groups: list[str] = field(default_factory=lambda: ["radiologists"])

    def claims(self) -> dict[str, Any]:
        return {
            "sub": self.sub,
            "preferred_username": self.preferred_username,
            "name": self.name,
            ROLE_CLAIM: list(self.groups),
        }


class IdentityProvider:
    """Keys, tokens and the OIDC endpoints; ``url`` is its issuer."""

    def __init__(self, public_host: str = "127.0.0.1", client_secret: str | None = None) -> None:
        self.public_host = public_host
        self.client_secret = client_secret
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.rsa_kid = "rsa-1"
        self.ec_kid = "ec-1"
        self.extra_keys: dict[str, rsa.RSAPrivateKey] = {}
        self.user = SignInUser()
        self.deny_with: str | None = None
        """An OAuth error (``access_denied``) the next sign-ins end with instead of a code."""
        self.pages: dict[str, str] = {}
        """HTML served at ``/pages/<name>`` (a page of another site, for cross-site tests)."""
        self.jwks_requests = 0
        self.token_requests: list[dict[str, str]] = []
        self._codes: dict[str, _Code] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- addresses --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.public_host}:{self.port}"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    def oidc_yaml(self, *, sign_in: bool = True, extra: str = "") -> str:
        """The ``http.auth.oidc`` mapping (flow style) for a router that trusts this provider."""
        roles = ", ".join(f"{group}: {role}" for group, role in ROLE_MAP.items())
        page = (
            f", client_id: {CLIENT_ID}, authorization_endpoint: {self.url}/authorize, "
            f"token_endpoint: {self.url}/token"
            if sign_in
            else ""
        )
        return (
            f"{{issuer: '{self.url}', audience: {API_AUDIENCE}, jwks_url: '{self.jwks_url}', "
            f"role_claim: {ROLE_CLAIM}, role_map: {{{roles}}}{page}{extra}}}"
        )

    # --- keys and tokens --------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        keys = [{**ECAlgorithm.to_jwk(self.ec_key.public_key(), as_dict=True), "kid": self.ec_kid}]
        for kid, key in ((self.rsa_kid, self.rsa_key), *self.extra_keys.items()):
            keys.append({**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid})
        for jwk in keys:
            jwk["use"] = "sig"
        return {"keys": keys}

    def rotate(self) -> str:
        """A new RSA signing key, published from now on beside the old ones; its kid."""
        kid = f"rsa-{len(self.extra_keys) + 2}"
        self.extra_keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return kid

    def claims(self, groups: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
        """An access token's claims for the API, valid for 5 minutes; ``None`` drops a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": API_AUDIENCE,
            "sub": "u-2002",
            "preferred_username": "dr.cuddy",
            ROLE_CLAIM: groups if groups is not None else ["radiologists"],
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(
        self,
        groups: list[str] | None = None,
        *,
        algorithm: str = "RS256",
        kid: str | None = None,
        headers: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        """A token signed with the provider's key for ``algorithm`` (RS256 or ES256)."""
        key: Any
        if algorithm == "ES256":
            key, default_kid = self.ec_key, self.ec_kid
        elif kid in self.extra_keys:
            key, default_kid = self.extra_keys[kid], kid
        else:
            key, default_kid = self.rsa_key, self.rsa_kid
        return jwt.encode(
            self.claims(groups, **overrides),
            key,
            algorithm=algorithm,
            headers={"kid": kid or default_kid, **(headers or {})},
        )

    def unsigned_token(self, groups: list[str] | None = None, **overrides: Any) -> str:
        """``alg: none``: claims anyone can write, with no signature at all."""
        header = {"alg": "none", "typ": "JWT", "kid": self.rsa_kid}
        body = self.claims(groups, **overrides)
        return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}."

    def hs256_with_public_key(self, groups: list[str] | None = None, **overrides: Any) -> str:
        """The key-confusion forgery: HS256 with the provider's *public* key (which anyone can
        fetch) as the HMAC secret, hoping the server verifies HS256 with the key it has."""
        public_pem = self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = {"alg": "HS256", "typ": "JWT", "kid": self.rsa_kid}
        body = self.claims(groups, **overrides)
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"
        signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"

    def signed_by_stranger(self, groups: list[str] | None = None, **overrides: Any) -> str:
        """Signed with a key the provider never published, under the provider's kid."""
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return jwt.encode(
            self.claims(groups, **overrides),
            stranger,
            algorithm="RS256",
            headers={"kid": self.rsa_kid},
        )

    # --- the authorization code flow ----------------------------------------------------------

    def _authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        redirect_uri = query.get("redirect_uri", "")
        if (
            query.get("response_type") != "code"
            or query.get("client_id") != CLIENT_ID
            or query.get("code_challenge_method") != "S256"
            or not query.get("code_challenge")
            or not redirect_uri.endswith("/auth/callback")
            or "openid" not in query.get("scope", "").split()
        ):
            return 400, {}, b"bad authorization request"
        params: dict[str, str] = {"state": query.get("state", "")}
        if self.deny_with is not None:
            params["error"] = self.deny_with
        else:
            code = secrets.token_urlsafe(16)
            with self._lock:
                self._codes[code] = _Code(
                    CLIENT_ID,
                    redirect_uri,
                    query["code_challenge"],
                    query.get("nonce", ""),
                    self.user.claims(),
                )
            params["code"] = code
        return 302, {"Location": f"{redirect_uri}?{urllib.parse.urlencode(params)}"}, b""

    def _token_endpoint(
        self, form: dict[str, str], authorization: str | None
    ) -> tuple[int, dict[str, Any]]:
        self.token_requests.append(dict(form))
        with self._lock:
            code = self._codes.pop(form.get("code", ""), None)
        if code is None or form.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}
        challenge = _b64(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
        if (
            not hmac.compare_digest(challenge, code.challenge)
            or form.get("redirect_uri") != code.redirect_uri
            or form.get("client_id") != code.client_id
        ):
            return 400, {"error": "invalid_grant"}
        if self.client_secret is not None and _basic_credentials(authorization) != (
            CLIENT_ID,
            self.client_secret,
        ):
            return 401, {"error": "invalid_client"}
        now = int(time.time())
        id_claims = {
            "iss": self.url,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": code.nonce,
            **code.user,
        }
        id_token = jwt.encode(
            id_claims, self.rsa_key, algorithm="RS256", headers={"kid": self.rsa_kid}
        )
        return 200, {
            "access_token": self.token(code.user[ROLE_CLAIM], sub=code.user["sub"]),
            "id_token": id_token,
            "token_type": "Bearer",
            "expires_in": 300,
        }

    # --- the server -------------------------------------------------------------------------

    def start(self) -> None:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, value: Any) -> None:
                self._send(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

            def do_GET(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parsed.query))
                if parsed.path == "/jwks":
                    provider.jwks_requests += 1
                    self._json(200, provider.jwks())
                elif parsed.path == "/.well-known/openid-configuration":
                    self._json(
                        200,
                        {
                            "issuer": provider.url,
                            "jwks_uri": provider.jwks_url,
                            "authorization_endpoint": f"{provider.url}/authorize",
                            "token_endpoint": f"{provider.url}/token",
                        },
                    )
                elif parsed.path == "/authorize":
                    status, headers, body = provider._authorize(query)
                    self._send(status, body, headers)
                elif parsed.path.startswith("/pages/") and parsed.path[7:] in provider.pages:
                    page = provider.pages[parsed.path[7:]].encode()
                    self._send(200, page, {"Content-Type": "text/html; charset=utf-8"})
                else:
                    self._send(404, b"not found", {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                if self.path == "/token":
                    status, body = provider._token_endpoint(form, self.headers.get("Authorization"))
                    self._json(status, body)
                else:
                    self._send(404, b"not found", {})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="test-idp", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@contextmanager
def running_identity_provider(
    public_host: str = "127.0.0.1", client_secret: str | None = None
) -> Iterator[IdentityProvider]:
    provider = IdentityProvider(public_host, client_secret)
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()
