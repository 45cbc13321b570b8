"""The ``http`` section: what a valid TLS and authentication setup is, and the predicates
``check-config`` uses to refuse an insecure router beyond loopback."""

from __future__ import annotations

import pytest

from config.loader import ConfigError, parse_config
from config.schema import HttpConfig, RouterConfig, http_is_loopback, http_is_secure

OIDC = (
    "{issuer: 'https://idp.hospital.example/realms/rad', audience: radrouter, "
    "jwks_url: 'https://idp.hospital.example/realms/rad/certs', role_map: {rad: radiologist}"
)


def http(text: str) -> HttpConfig:
    return parse_config(f"http: {text}\n", "http.yaml").http


def test_the_default_is_loopback_plain_http_without_authentication_and_not_secure() -> None:
    config = RouterConfig()
    assert (config.http.host, config.http.tls, config.http.auth) == ("127.0.0.1", None, None)
    assert http_is_loopback(config.http) and not http_is_secure(config)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("radrouter.hospital.example", False),
    ],
)
def test_loopback_means_this_hosts_loopback_interface_only(host: str, loopback: bool) -> None:
    assert http_is_loopback(HttpConfig(host=host)) is loopback


def test_secure_needs_both_tls_and_authentication() -> None:
    tls = "tls: {cert_file: /etc/radrouter/tls.crt, key_file: /etc/radrouter/tls.key}"
    auth = "auth: {api_keys_file: /etc/radrouter/api-keys.json}"
    assert not http_is_secure(http(f"{{host: 0.0.0.0, {tls}}}"))
    assert not http_is_secure(http(f"{{host: 0.0.0.0, {auth}}}"))
    assert http_is_secure(http(f"{{host: 0.0.0.0, {tls}, {auth}}}"))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{auth: {}}", "give oidc, api_keys_file or both"),
        (f"{{auth: {{oidc: {OIDC}, algorithms: [HS256]}}}}}}", "algorithms"),
        (f"{{auth: {{oidc: {OIDC}, algorithms: [none]}}}}}}", "algorithms"),
        (f"{{auth: {{oidc: {OIDC}, algorithms: []}}}}}}", "algorithms"),
        (
            "{auth: {oidc: {issuer: 'https://idp.example', audience: a, "
            "jwks_url: 'http://idp.example/certs', role_map: {a: admin}}}}",
            "jwks_url needs an https:// URL",
        ),
        (f"{{auth: {{oidc: {OIDC}, client_id: page}}}}}}", "needs authorization_endpoint"),
        (
            f"{{auth: {{oidc: {OIDC}, client_secret_env: SECRET}}}}}}",
            "need client_id",
        ),
        (f"{{auth: {{oidc: {OIDC}, role_map: {{a: superuser}}}}}}}}", "role_map"),
        (
            "{auth: {oidc: {issuer: 'https://i.example', audience: a, "
            "jwks_url: 'https://i.example/k', role_map: {}}}}",
            "role_map",
        ),
        (
            "{tls: {cert_file: c, key_file: k, key_password_env: P, key_password_file: f}}",
            "not both",
        ),
        ("{tls: {cert_file: c, key_file: k, min_version: '1.1'}}", "min_version"),
        ("{allowed_hosts: ['https://radrouter.example']}", "allowed_hosts"),
        ("{allowed_hosts: ['radrouter.example:8443']}", "allowed_hosts"),
    ],
)
def test_an_unsafe_or_incomplete_http_section_is_refused(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        http(text)


def test_a_complete_oidc_setup_with_the_page_sign_in_is_accepted() -> None:
    config = http(
        "{host: 0.0.0.0, allowed_hosts: [radrouter.hospital.example, '*.rad.hospital.example'], "
        "tls: {cert_file: /etc/radrouter/tls.crt, key_file: /etc/radrouter/tls.key, "
        "key_password_env: RADROUTER_TLS_KEY_PASSWORD}, "
        f"auth: {{metrics_public: true, api_keys_file: /etc/radrouter/api-keys.json, oidc: {OIDC}, "
        "role_claim: realm_access.roles, client_id: radrouter-worklist, "
        "client_secret_file: /etc/radrouter/oidc-secret, "
        "authorization_endpoint: 'https://idp.hospital.example/auth', "
        "token_endpoint: 'https://idp.hospital.example/token'}}}"
    )
    assert config.auth is not None and config.auth.oidc is not None
    assert config.auth.oidc.algorithms == ["RS256", "ES256"]
    assert config.auth.oidc.leeway_s == 30
    assert http_is_secure(config) and not http_is_loopback(config)
