"""A throwaway PKI for the DICOM TLS tests: a CA, and server and client certificates it signs
(valid, expired, for another name), as PEM files dcmtk and Python's ``ssl`` both read."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testing.orthanc import free_port
from testing.storescp import AE_TITLE, DCMTK_ENV, ReceivingPacs, wait_listening

KEY_BITS = 2048
"""RSA 2048: what most hospital PKIs issue, and what ECDHE-RSA suites need."""


@dataclass(frozen=True)
class IssuedCertificate:
    cert: Path
    key: Path
    sha256: str
    """Fingerprint of the DER certificate, lower-case hex."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(key: rsa.RSAPrivateKey, path: Path, password: str | None) -> None:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password is not None
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA in ``folder`` (``<name>.pem``), issuing leaf certificates beside it."""

    name: str
    folder: Path
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def cert_file(self) -> Path:
        return self.folder / f"{self.name}.pem"

    @classmethod
    def create(cls, folder: Path, name: str = "test-ca") -> CertificateAuthority:
        folder.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"radrouter {name}")])
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        ca = cls(name, folder, certificate, key)
        ca.cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return ca

    def issue(
        self,
        name: str,
        *,
        common_name: str | None = None,
        dns_names: tuple[str, ...] = ("localhost",),
        ip_addresses: tuple[str, ...] = ("127.0.0.1",),
        expired: bool = False,
        password: str | None = None,
    ) -> IssuedCertificate:
        """A leaf certificate for server and client use, as ``<name>.crt`` and ``<name>.key``
        (the key encrypted with ``password`` if given)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        now = _now()
        if expired:
            not_before, not_after = now - datetime.timedelta(days=10), now - datetime.timedelta(1)
        else:
            not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(7)
        alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), False)
        certificate = builder.sign(self.key, hashes.SHA256())
        der = certificate.public_bytes(serialization.Encoding.DER)
        issued = IssuedCertificate(
            self.folder / f"{name}.crt",
            self.folder / f"{name}.key",
            hashlib.sha256(der).hexdigest(),
        )
        issued.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(key, issued.key, password)
        return issued


# --------------------------------------------------------------------------------------------
# dcmtk's TLS-enabled tools as the real peers (called by full path: pynetdicom's console
# scripts in the virtual environment have the same names)

PeerCertificatePolicy = Literal["require", "verify", "ignore"]
_PEER_FLAGS: dict[str, str] = {"require": "-rc", "verify": "-vc", "ignore": "-ic"}


@contextmanager
def running_tls_storescp(
    folder: Path,
    server: IssuedCertificate,
    trusted: Sequence[Path],
    peer_certificate: PeerCertificatePolicy = "require",
) -> Iterator[ReceivingPacs]:
    """dcmtk storescp in TLS mode on a free loopback port, with ``server``'s certificate,
    trusting the CA files ``trusted`` for client certificates, writing to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = ["/usr/bin/storescp", "+tls", str(server.key), str(server.cert), "-pw"]
    for ca_file in trusted:
        command += ["+cf", str(ca_file)]
    command += [_PEER_FLAGS[peer_certificate], "-aet", AE_TITLE, "-od", str(folder), str(port)]
    process = subprocess.Popen(command, env=DCMTK_ENV, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield ReceivingPacs(port, folder)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def storescu_tls(
    port: int,
    paths: Sequence[Path],
    *,
    trusted: Sequence[Path],
    client: IssuedCertificate | None,
    calling: str = "PACS",
    called: str = "RADROUTER",
) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu over TLS to ``port``: verifying the server's certificate against the CA
    files ``trusted``, presenting ``client``'s certificate (anonymous TLS when ``None``)."""
    command = ["/usr/bin/storescu"]
    if client is None:
        command += ["+tla"]
    else:
        command += ["+tls", str(client.key), str(client.cert), "-pw"]
    for ca_file in trusted:
        command += ["+cf", str(ca_file)]
    command += ["-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, paths)]
    return subprocess.run(
        command, capture_output=True, text=True, env=DCMTK_ENV, timeout=60, check=False
    )
