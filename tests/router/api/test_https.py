"""HTTPS: the API serves TLS 1.2 and 1.3 with the configured certificate, refuses older
clients, takes the key's passphrase from the environment or a file, and says which file is
wrong when it cannot start."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from config.loader import parse_config
from config.schema import ApiRole, HttpTlsConfig
from router.api.api_keys import create_key
from router.api.tls import TlsSetupError, server_context
from router.service import RouterService
from testing.orthanc import free_port
from testing.tls import CertificateAuthority, IssuedCertificate

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_cert(ca: CertificateAuthority) -> IssuedCertificate:
    return ca.issue("radrouter", dns_names=("localhost",), ip_addresses=("127.0.0.1",))


@pytest.fixture(scope="module")
def locked_cert(ca: CertificateAuthority) -> IssuedCertificate:
    return ca.issue("radrouter-locked", password=PASSPHRASE)


def start(folder: Path, tls: str, *, keys_file: Path) -> RouterService:
    yaml = (
        f"node: {{ae_title: RADROUTER, bind: 127.0.0.1, port: {free_port()}}}\n"
        f"http: {{host: 127.0.0.1, port: 0, tls: {tls}, auth: {{api_keys_file: {keys_file}}}}}\n"
    )
    service = RouterService(parse_config(yaml, "tls.yaml"), data_dir=folder / "data")
    service.start(warm=False)
    return service


@pytest.fixture
def https_router(
    tmp_path: Path, server_cert: IssuedCertificate
) -> Iterator[tuple[RouterService, str]]:
    keys_file = tmp_path / "keys.json"
    key, _ = create_key(keys_file, name="monitor", role=ApiRole.VIEWER)
    service = start(
        tmp_path,
        f"{{cert_file: {server_cert.cert}, key_file: {server_cert.key}}}",
        keys_file=keys_file,
    )
    try:
        yield service, key
    finally:
        service.stop()


def handshake(port: int, ca: CertificateAuthority, version: ssl.TLSVersion) -> str:
    """Connect with a client that speaks only ``version``; the protocol agreed."""
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer what it is asked
    context.minimum_version = context.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return str(tls.version())


def test_the_api_answers_over_https_with_the_configured_certificate(
    https_router: tuple[RouterService, str], ca: CertificateAuthority
) -> None:
    service, key = https_router
    url = f"https://127.0.0.1:{service.http_port}"

    health = httpx.get(
        f"{url}/healthz", verify=ssl.create_default_context(cafile=str(ca.cert_file))
    )
    studies = httpx.get(
        f"{url}/studies",
        headers={"X-API-Key": key},
        verify=ssl.create_default_context(cafile=str(ca.cert_file)),
    )

    assert health.json() == {"status": "ok"}
    assert health.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert studies.status_code == 200 and studies.json() == []
    ready = httpx.get(f"{url}/readyz", verify=ssl.create_default_context(cafile=str(ca.cert_file)))
    assert ready.json()["http_security"]["secure"] is True


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_2_and_1_3_are_spoken_and_older_versions_refused(
    https_router: tuple[RouterService, str], ca: CertificateAuthority
) -> None:
    service, _ = https_router
    assert service.http_port is not None
    assert handshake(service.http_port, ca, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert handshake(service.http_port, ca, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    for old in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
        with pytest.raises(ssl.SSLError):
            handshake(service.http_port, ca, old)


def test_plain_http_to_the_https_port_gets_no_data(
    https_router: tuple[RouterService, str],
) -> None:
    service, key = https_router
    try:
        answer = httpx.get(
            f"http://127.0.0.1:{service.http_port}/studies", headers={"X-API-Key": key}, timeout=5
        )
    except httpx.HTTPError:
        return  # the connection is dropped: what uvicorn does
    assert answer.status_code == 400 and "[" not in answer.text


def test_a_client_that_does_not_trust_the_ca_does_not_connect(
    https_router: tuple[RouterService, str],
) -> None:
    service, _ = https_router
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://127.0.0.1:{service.http_port}/healthz")


def test_the_key_passphrase_comes_from_the_environment_or_a_file(
    locked_cert: IssuedCertificate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_KEY_PASSPHRASE", PASSPHRASE)
    from_env = HttpTlsConfig(
        cert_file=locked_cert.cert, key_file=locked_cert.key, key_password_env="TEST_KEY_PASSPHRASE"
    )
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    from_file = HttpTlsConfig(
        cert_file=locked_cert.cert, key_file=locked_cert.key, key_password_file=secret
    )

    for tls in (from_env, from_file):
        context = server_context(tls)
        assert context.minimum_version is ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"key_password_env": "TEST_WRONG_PASSPHRASE"}, "wrong passphrase"),
        ({"key_password_env": "TEST_UNSET_PASSPHRASE"}, "TEST_UNSET_PASSPHRASE is not set"),
        (
            {"key_file": Path("/nonexistent/radrouter.key")},
            "/nonexistent/radrouter.key does not exist",
        ),
    ],
)
def test_a_key_that_cannot_be_used_stops_the_start_with_the_reason(
    locked_cert: IssuedCertificate,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, object],
    says: str,
) -> None:
    monkeypatch.setenv("TEST_WRONG_PASSPHRASE", "not it")
    monkeypatch.delenv("TEST_UNSET_PASSPHRASE", raising=False)
    tls = HttpTlsConfig.model_validate(
        {"cert_file": locked_cert.cert, "key_file": locked_cert.key, **change}
    )
    with pytest.raises(TlsSetupError, match=says):
        server_context(tls)


def test_min_version_1_3_refuses_tls_1_2(
    tmp_path: Path, server_cert: IssuedCertificate, ca: CertificateAuthority
) -> None:
    service = start(
        tmp_path,
        f"{{cert_file: {server_cert.cert}, key_file: {server_cert.key}, min_version: '1.3'}}",
        keys_file=tmp_path / "keys.json",
    )
    try:
        assert service.http_port is not None
        assert handshake(service.http_port, ca, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
        with pytest.raises(ssl.SSLError):
            handshake(service.http_port, ca, ssl.TLSVersion.TLSv1_2)
    finally:
        service.stop()
