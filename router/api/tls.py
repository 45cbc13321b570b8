"""HTTPS for the HTTP API: the server's TLS context (TLS 1.2 or later, forward-secret AEAD
cipher suites only, as in Mozilla's "intermediate" profile)."""

from __future__ import annotations

import ssl

from config.schema import HttpTlsConfig
from router.secrets import SecretError, read_secret

TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
"""For TLS 1.2; TLS 1.3's own suites are all AEAD with forward secrecy."""
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsSetupError(Exception):
    """The certificate, key or passphrase the config names cannot be used."""


def server_context(tls: HttpTlsConfig) -> ssl.SSLContext:
    """The context uvicorn serves with; raises ``TlsSetupError`` naming the file at fault."""
    for path in (tls.cert_file, tls.key_file):
        if not path.is_file():
            raise TlsSetupError(f"http.tls: {path} does not exist")
    try:
        password = read_secret(tls.key_password_env, tls.key_password_file, "http.tls key")
    except SecretError as exc:
        raise TlsSetupError(str(exc)) from exc
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=password)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(
            f"http.tls: cannot use {tls.cert_file} with {tls.key_file} "
            f"(wrong passphrase, or a key that is not the certificate's?): {exc}"
        ) from exc
    return context
