"""DICOM TLS (PS3.15 Annex B.9, BCP 195): the SSL contexts of the node's TLS listener and of
outgoing associations, and which calling AE titles a client certificate may use.

Contexts come from ``ssl.create_default_context`` (certificate and host name checks on,
compression off), narrowed to TLS 1.2 or later and, for TLS 1.2, the four suites BCP 195
(RFC 9325) recommends: ECDHE key exchange with AES-GCM. TLS 1.3 suites are all AEAD and kept.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from config.schema import ClientCertificate, DicomTlsClient, NodeTlsConfig
from router.secrets import SecretError, read_secret

BCP195_TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
    )
)
"""TLS_ECDHE_{ECDSA,RSA}_WITH_AES_{128_GCM_SHA256,256_GCM_SHA384} (RFC 9325 section 4.2), in
OpenSSL's names; what dcmtk's BCP 195 profiles propose too."""


class TlsSetupError(Exception):
    """A certificate, key, CA bundle or passphrase could not be loaded. The message names the
    file or variable, never a secret."""


def _passphrase(env: str | None, file: Path | None, environ: Mapping[str, str]) -> str | None:
    """The key's passphrase (``router/secrets.py``); ``None`` when neither source is named."""
    try:
        return read_secret(env, file, "the key's passphrase", environ)
    except SecretError as exc:
        raise TlsSetupError(str(exc)) from None


def _load_key_pair(
    context: ssl.SSLContext,
    cert_file: Path,
    key_file: Path | None,
    password: str | None,
) -> None:
    def no_passphrase() -> str:
        # Without this, OpenSSL would prompt for the passphrase on the terminal.
        raise TlsSetupError(
            f"the key in {key_file or cert_file} is encrypted: give key_password_env or "
            "key_password_file"
        )

    try:
        context.load_cert_chain(
            cert_file, key_file, password if password is not None else no_passphrase
        )
    except ssl.SSLError as exc:
        raise TlsSetupError(
            f"cannot use certificate {cert_file} with key {key_file or cert_file}: a wrong "
            f"passphrase, or a key that is not the certificate's (OpenSSL: {exc.reason})"
        ) from None
    except OSError as exc:
        raise TlsSetupError(f"cannot read {cert_file} or its key: {exc.strerror}") from None


def _load_cas(context: ssl.SSLContext, ca_file: Path, what: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"{what} {ca_file} holds no usable PEM certificate: {exc}") from None
    except OSError as exc:
        raise TlsSetupError(f"cannot read {what} {ca_file}: {exc.strerror}") from None


def _bcp195(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(tls: NodeTlsConfig, environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """The node's TLS listener: its certificate and key; with ``client_ca_file``, a client
    certificate signed by one of those CAs is required (nothing else is trusted for clients)."""
    context = _bcp195(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    password = _passphrase(
        tls.key_password_env, tls.key_password_file, os.environ if environ is None else environ
    )
    _load_key_pair(context, tls.cert_file, tls.key_file, password)
    if tls.client_ca_file is not None:
        _load_cas(context, tls.client_ca_file, "client_ca_file")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class OutgoingTls:
    """TLS for one outgoing association: pynetdicom's ``tls_args`` and, once it has been
    tried, why the handshake failed (pynetdicom only logs that)."""

    context: ssl.SSLContext
    server_name: str
    handshake_errors: list[ssl.SSLError] = field(default_factory=list)

    @property
    def tls_args(self) -> tuple[ssl.SSLContext, str]:
        return self.context, self.server_name

    def failure(self) -> str | None:
        """Why the TLS handshake failed, or ``None`` if it did not (or was not reached)."""
        if not self.handshake_errors:
            return None
        return describe_ssl_error(self.handshake_errors[-1])


def describe_ssl_error(exc: ssl.SSLError) -> str:
    """``certificate verify failed: certificate has expired`` rather than OpenSSL's tuple."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    return str(exc.reason or exc).replace("_", " ").lower()


def outgoing_tls(
    tls: DicomTlsClient, host: str, environ: Mapping[str, str] | None = None
) -> OutgoingTls:
    """The context for an association to ``host``: the peer's certificate must chain to
    ``ca_file`` (the system's CAs without it) and carry ``server_name`` (default ``host``)."""
    try:  # with a cafile, only its CAs are trusted (not the system's as well)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    except ssl.SSLError as exc:
        raise TlsSetupError(
            f"ca_file {tls.ca_file} holds no usable PEM certificate: {exc}"
        ) from None
    except OSError as exc:
        raise TlsSetupError(f"cannot read ca_file {tls.ca_file}: {exc.strerror}") from None
    _bcp195(context)
    if tls.cert_file is not None:
        password = _passphrase(
            tls.key_password_env,
            tls.key_password_file,
            os.environ if environ is None else environ,
        )
        _load_key_pair(context, tls.cert_file, tls.key_file, password)
    outgoing = OutgoingTls(context, tls.server_name or host)
    context.sslsocket_class = _recording_socket_class(outgoing.handshake_errors)
    return outgoing


def _recording_socket_class(errors: list[ssl.SSLError]) -> type[ssl.SSLSocket]:
    class RecordingSSLSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            try:
                super().do_handshake(block)
            except ssl.SSLError as exc:
                errors.append(exc)
                raise

    return RecordingSSLSocket


# --------------------------------------------------------------------------------------------
# Client certificates -> calling AE titles


@dataclass(frozen=True)
class PeerCertificate:
    """What identifies a verified client certificate."""

    subject_cns: tuple[str, ...]
    alt_names: tuple[str, ...]
    """DNS names, IP addresses and URIs of its subjectAltName."""
    sha256: str
    """Fingerprint of the DER certificate, lower-case hex without colons."""

    @classmethod
    def of(cls, sock: ssl.SSLSocket) -> PeerCertificate | None:
        """The verified certificate the peer presented, or ``None``."""
        der = sock.getpeercert(binary_form=True)
        details = sock.getpeercert()
        if not der or not details:
            return None
        subject = details.get("subject", ())
        subject_cns = tuple(
            str(pair[1])
            for rdn in (subject if isinstance(subject, tuple) else ())
            for pair in rdn
            if pair[0] == "commonName"
        )
        alt = details.get("subjectAltName", ())
        alt_names = tuple(
            str(pair[1])
            for pair in (alt if isinstance(alt, tuple) else ())
            if pair[0] in ("DNS", "IP Address", "URI")
        )
        return cls(subject_cns, alt_names, hashlib.sha256(der).hexdigest())

    def matches(self, entry: ClientCertificate) -> bool:
        if entry.subject_cn is not None:
            return entry.subject_cn in self.subject_cns
        if entry.san is not None:
            return entry.san in self.alt_names
        return entry.sha256 == self.sha256

    def describe(self) -> str:
        """For logs: the first CN and the fingerprint's start (no secrets, no patient data)."""
        name = f"CN={self.subject_cns[0]}, " if self.subject_cns else ""
        return f"{name}sha256 {self.sha256[:16]}..."


def ae_titles_allowed(
    entries: Sequence[ClientCertificate] | None, certificate: PeerCertificate | None
) -> frozenset[str] | None:
    """The calling AE titles ``certificate`` may use: ``None`` when no mapping is configured
    (any), else those of every entry it matches (none for an unknown certificate)."""
    if entries is None:
        return None
    if certificate is None:
        return frozenset()
    return frozenset(
        title for entry in entries if certificate.matches(entry) for title in entry.ae_titles
    )
