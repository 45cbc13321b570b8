"""C-STORE and C-ECHO over DICOM TLS to dcmtk's storescp in TLS mode: delivered when the
certificate chains to the configured CA and names the host; refused, with the reason, when it
is untrusted, expired or for another name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from config.schema import DicomTlsClient
from router.deliver.dicom_send import FileToSend, Peer, SendError, echo, send_files
from testing.dicom_tools import make_ct_slices
from testing.storescp import ReceivingPacs
from testing.tls import CertificateAuthority, IssuedCertificate, running_tls_storescp


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    pacs: IssuedCertificate
    """For ``localhost`` and ``127.0.0.1``."""
    expired: IssuedCertificate
    elsewhere: IssuedCertificate
    """For ``pacs.elsewhere.example`` only."""
    radrouter: IssuedCertificate
    radrouter_encrypted: IssuedCertificate
    rogue_ca: CertificateAuthority


PASSPHRASE = "correct horse"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(folder / "ca")
    return Pki(
        ca,
        ca.issue("pacs"),
        ca.issue("expired", expired=True),
        ca.issue("elsewhere", dns_names=("pacs.elsewhere.example",), ip_addresses=()),
        ca.issue("radrouter", common_name="radrouter.hospital.example"),
        ca.issue("radrouter-encrypted", password=PASSPHRASE),
        CertificateAuthority.create(folder / "rogue", "rogue-ca"),
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[FileToSend]:
    folder = tmp_path_factory.mktemp("ct")
    found = []
    for ds in make_ct_slices(2):
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        found.append(FileToSend.from_path(path))
    return found


def peer(pacs: ReceivingPacs, tls: DicomTlsClient) -> Peer:
    return Peer("STORESCP", "127.0.0.1", pacs.port, "RADROUTER", 10.0, tls)


def client_tls(pki: Pki, **extra: object) -> DicomTlsClient:
    return DicomTlsClient.model_validate(
        {
            "ca_file": pki.ca.cert_file,
            "cert_file": pki.radrouter.cert,
            "key_file": pki.radrouter.key,
            **extra,
        }
    )


def test_send_over_tls_delivers_to_storescp_that_requires_a_client_certificate(
    tmp_path: Path, pki: Pki, files: list[FileToSend]
) -> None:
    with running_tls_storescp(tmp_path / "pacs", pki.pacs, [pki.ca.cert_file]) as pacs:
        assert send_files(peer(pacs, client_tls(pki)), files) == len(files)
        assert len(list(pacs.folder.iterdir())) == len(files)
        assert echo(peer(pacs, client_tls(pki)))


def test_plain_peer_description_is_unchanged_and_tls_is_named(pki: Pki) -> None:
    assert str(Peer("PACS", "10.0.0.5", 104, "RADROUTER")) == "PACS@10.0.0.5:104"
    assert str(Peer("PACS", "10.0.0.5", 2762, "RADROUTER", tls=client_tls(pki))).endswith("(TLS)")


@pytest.mark.parametrize(
    ("server", "trusted", "reason"),
    [
        # storescp sends its CA along: "self-signed certificate in certificate chain".
        ("pacs", "rogue_ca", "certificate verify failed: self-signed certificate"),
        ("expired", "ca", "certificate verify failed: certificate has expired"),
        ("elsewhere", "ca", "certificate verify failed: IP address mismatch"),
    ],
    ids=["untrusted", "expired", "wrong-name"],
)
def test_server_certificate_that_fails_verification_is_refused_with_the_reason(
    tmp_path: Path, pki: Pki, files: list[FileToSend], server: str, trusted: str, reason: str
) -> None:
    ca: CertificateAuthority = getattr(pki, trusted)
    tls = client_tls(pki, ca_file=ca.cert_file)
    with running_tls_storescp(tmp_path / "pacs", getattr(pki, server), [pki.ca.cert_file]) as pacs:
        with pytest.raises(SendError) as refused:
            send_files(peer(pacs, tls), files)
        assert not echo(peer(pacs, tls))
        assert not any(pacs.folder.iterdir()), "nothing may travel before the peer is trusted"
    assert reason in str(refused.value)
    assert not refused.value.unreachable, "the peer answered: a certificate problem, no outage"


def test_server_name_is_the_name_the_certificate_must_carry(
    tmp_path: Path, pki: Pki, files: list[FileToSend]
) -> None:
    tls = client_tls(pki, server_name="pacs.elsewhere.example")
    with running_tls_storescp(tmp_path / "pacs", pki.elsewhere, [pki.ca.cert_file]) as pacs:
        assert send_files(peer(pacs, tls), files) == len(files)


def test_storescp_that_requires_a_client_certificate_refuses_radrouter_without_one(
    tmp_path: Path, pki: Pki, files: list[FileToSend]
) -> None:
    tls = DicomTlsClient(ca_file=pki.ca.cert_file)
    with (
        running_tls_storescp(tmp_path / "pacs", pki.pacs, [pki.ca.cert_file]) as pacs,
        pytest.raises(SendError),
    ):
        send_files(peer(pacs, tls), files)
    with running_tls_storescp(
        tmp_path / "pacs2", pki.pacs, [pki.ca.cert_file], peer_certificate="ignore"
    ) as pacs:
        assert send_files(peer(pacs, tls), files) == len(files)


def test_encrypted_client_key_is_opened_with_the_passphrase_from_a_file(
    tmp_path: Path, pki: Pki, files: list[FileToSend]
) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    tls = client_tls(
        pki,
        cert_file=pki.radrouter_encrypted.cert,
        key_file=pki.radrouter_encrypted.key,
        key_password_file=secret,
    )
    with running_tls_storescp(tmp_path / "pacs", pki.pacs, [pki.ca.cert_file]) as pacs:
        assert send_files(peer(pacs, tls), files) == len(files)


def test_missing_passphrase_variable_is_a_send_error_naming_it(
    pki: Pki, files: list[FileToSend], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RADROUTER_TEST_KEY_PASSPHRASE", raising=False)
    tls = client_tls(
        pki,
        cert_file=pki.radrouter_encrypted.cert,
        key_file=pki.radrouter_encrypted.key,
        key_password_env="RADROUTER_TEST_KEY_PASSPHRASE",
    )
    target = Peer("STORESCP", "127.0.0.1", 9, "RADROUTER", 5.0, tls)
    with pytest.raises(SendError, match="RADROUTER_TEST_KEY_PASSPHRASE"):
        send_files(target, files)
    monkeypatch.setenv("RADROUTER_TEST_KEY_PASSPHRASE", "wrong")
    with pytest.raises(SendError, match="wrong passphrase") as refused:
        send_files(target, files)
    assert "wrong" not in str(refused.value).replace("wrong passphrase", "")
