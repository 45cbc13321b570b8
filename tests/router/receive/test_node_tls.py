"""The node's DICOM TLS listener over loopback, with dcmtk's storescu as the real client:
storing, client certificates mapped to AE titles, and every refusal (untrusted, expired, none,
a plain client) without the node stopping."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from config.schema import AllowedCaller, ClientCertificate, NodeConfig, NodeTlsConfig
from router.dicom_tls import TlsSetupError
from router.receive.node import AssociationTracker, DicomNode
from router.receive.spool import Spool
from router.service import wait_for
from router.store.database import Database, SqliteDatabase
from testing.dicom_node import make_ingestor
from testing.dicom_tools import make_ct_slices
from testing.orthanc import free_port
from testing.tls import CertificateAuthority, IssuedCertificate, storescu_tls


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: IssuedCertificate
    ct1: IssuedCertificate
    """A client certificate with CN ``ct1.hospital.example``."""
    expired: IssuedCertificate
    rogue_ca: CertificateAuthority
    rogue: IssuedCertificate
    """Signed by a CA the node does not trust."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(folder / "ca")
    rogue_ca = CertificateAuthority.create(folder / "rogue", "rogue-ca")
    return Pki(
        ca,
        ca.issue("node"),
        ca.issue("ct1", common_name="ct1.hospital.example", dns_names=("ct1.hospital.example",)),
        ca.issue("expired", common_name="ct1.hospital.example", expired=True),
        rogue_ca,
        rogue_ca.issue("rogue", common_name="ct1.hospital.example"),
    )


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ct")
    paths = []
    for ds in make_ct_slices(3):
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass
class TlsNode:
    node: DicomNode
    db: Database
    spool: Spool
    allowed: list[AllowedCaller] | None = None

    @property
    def stored(self) -> int:
        return len(self.spool.iter_files())


StartNode = Callable[..., TlsNode]


@pytest.fixture
def start_node(tmp_path: Path, pki: Pki) -> Iterator[StartNode]:
    """Start a node with a plain and a TLS listener; keyword arguments go to NodeTlsConfig."""
    started: list[DicomNode] = []

    def start(**tls: object) -> TlsNode:
        db = SqliteDatabase(tmp_path / "db.sqlite3")
        ingestor = make_ingestor(db, tmp_path)
        config = NodeConfig(
            ae_title="RADROUTER",
            bind="127.0.0.1",
            port=free_port(),
            tls=NodeTlsConfig.model_validate(
                {
                    "port": free_port(),
                    "cert_file": pki.server.cert,
                    "key_file": pki.server.key,
                    **tls,
                }
            ),
        )
        holder = TlsNode(None, db, ingestor.spool)  # type: ignore[arg-type]
        node = DicomNode(config, ingestor, AssociationTracker(db), lambda: holder.allowed)
        node.start()
        started.append(node)
        holder.node = node
        return holder

    yield start
    for node in started:
        node.stop()


def mtls(pki: Pki, entries: list[ClientCertificate] | None = None) -> dict[str, object]:
    return {"client_ca_file": pki.ca.cert_file, "client_certificates": entries}


def plain_echo(port: int, calling: str = "TESTSCU") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADROUTER")
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def tls_echo(port: int, pki: Pki, client: IssuedCertificate, calling: str) -> bool:
    """pynetdicom as a TLS client with ``client``'s certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca.cert_file)
    context.load_cert_chain(client.cert, client.key)
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADROUTER", tls_args=(context, "localhost"))
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def test_storescu_over_tls_stores_the_study(
    start_node: StartNode, pki: Pki, slices: list[Path]
) -> None:
    node = start_node()
    done = storescu_tls(
        node.node.tls_port, slices, trusted=[pki.ca.cert_file], client=None, calling="CT1"
    )
    assert done.returncode == 0, done.stderr
    assert node.stored == len(slices)
    (row,) = node.db.query("SELECT calling_ae, state FROM associations")
    assert (row["calling_ae"], row["state"]) == ("CT1", "released")


def test_mtls_certificate_stores_with_the_ae_titles_it_is_mapped_to(
    start_node: StartNode, pki: Pki, slices: list[Path]
) -> None:
    entries = [ClientCertificate(subject_cn="ct1.hospital.example", ae_titles=["CT1", "CT1B"])]
    node = start_node(**mtls(pki, entries))
    for calling in ("CT1", "CT1B"):
        done = storescu_tls(
            node.node.tls_port, slices, trusted=[pki.ca.cert_file], client=pki.ct1, calling=calling
        )
        assert done.returncode == 0, done.stderr
    assert node.stored == len(slices)


def test_mtls_certificate_used_with_another_ae_title_is_rejected_and_logged(
    start_node: StartNode, pki: Pki, slices: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    entries = [ClientCertificate(subject_cn="ct1.hospital.example", ae_titles=["CT1"])]
    node = start_node(**mtls(pki, entries))
    with caplog.at_level(logging.WARNING, logger="router.receive.node"):
        done = storescu_tls(
            node.node.tls_port, slices, trusted=[pki.ca.cert_file], client=pki.ct1, calling="MR2"
        )
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stderr
    assert node.stored == 0
    (line,) = [r.getMessage() for r in caplog.records if "rejected association" in r.message]
    assert "MR2" in line and "127.0.0.1" in line and "CN=ct1.hospital.example" in line
    (event,) = node.db.query("SELECT detail FROM events WHERE kind = 'association_rejected'")
    assert "MR2" in event["detail"] and "may not use this calling AE title" in event["detail"]


def test_certificates_are_recognised_by_san_and_by_fingerprint(
    start_node: StartNode, pki: Pki
) -> None:
    entries = [
        ClientCertificate(san="ct1.hospital.example", ae_titles=["BY_SAN"]),
        ClientCertificate(sha256=pki.server.sha256, ae_titles=["BY_FINGERPRINT"]),
    ]
    node = start_node(**mtls(pki, entries))
    port = node.node.tls_port
    assert tls_echo(port, pki, pki.ct1, "BY_SAN")
    assert not tls_echo(port, pki, pki.ct1, "BY_FINGERPRINT")
    assert tls_echo(port, pki, pki.server, "BY_FINGERPRINT")
    assert not tls_echo(port, pki, pki.server, "BY_SAN")


def test_a_certificate_no_entry_names_is_rejected(start_node: StartNode, pki: Pki) -> None:
    entries = [ClientCertificate(subject_cn="mr1.hospital.example", ae_titles=["CT1"])]
    node = start_node(**mtls(pki, entries))
    assert not tls_echo(node.node.tls_port, pki, pki.ct1, "CT1")
    (event,) = node.db.query("SELECT detail FROM events WHERE kind = 'association_rejected'")
    assert "not in node.tls.client_certificates" in event["detail"]


def test_certificate_mapping_composes_with_the_allow_list(start_node: StartNode, pki: Pki) -> None:
    entries = [ClientCertificate(subject_cn="ct1.hospital.example", ae_titles=["CT1", "CT9"])]
    node = start_node(**mtls(pki, entries))
    node.allowed = [AllowedCaller(ae_title="CT1")]
    assert tls_echo(node.node.tls_port, pki, pki.ct1, "CT1")
    assert not tls_echo(node.node.tls_port, pki, pki.ct1, "CT9"), "certificate yes, list no"


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        ("rogue", "certificate verify failed: unable to get local issuer certificate"),
        ("expired", "certificate verify failed: certificate has expired"),
        (None, "peer did not return a certificate"),
    ],
    ids=["untrusted", "expired", "none"],
)
def test_client_certificate_that_fails_verification_is_refused(
    start_node: StartNode,
    pki: Pki,
    slices: list[Path],
    caplog: pytest.LogCaptureFixture,
    client: str | None,
    reason: str,
) -> None:
    node = start_node(**mtls(pki))
    certificate = None if client is None else getattr(pki, client)
    with caplog.at_level(logging.WARNING, logger="router.receive.node"):
        done = storescu_tls(
            node.node.tls_port, slices, trusted=[pki.ca.cert_file], client=certificate
        )
        assert done.returncode != 0

        def handshake_lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]

        # The node's thread logs once its handshake has failed, which may be just after the
        # client has seen the alert and ended.
        wait_for(lambda: bool(handshake_lines()), 10, 0.05)
    assert node.stored == 0
    (line,) = handshake_lines()
    assert "127.0.0.1" in line and reason in line
    # The node keeps serving: a client with a good certificate stores next.
    done = storescu_tls(node.node.tls_port, slices, trusted=[pki.ca.cert_file], client=pki.ct1)
    assert done.returncode == 0, done.stderr


def test_storescu_refuses_a_node_certificate_it_does_not_trust(
    start_node: StartNode, pki: Pki, slices: list[Path]
) -> None:
    node = start_node()
    done = storescu_tls(node.node.tls_port, slices, trusted=[pki.rogue_ca.cert_file], client=None)
    assert done.returncode != 0
    assert node.stored == 0


def test_plain_client_on_the_tls_port_is_refused_and_the_node_keeps_serving(
    start_node: StartNode, pki: Pki, slices: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node()
    with caplog.at_level(logging.WARNING, logger="router.receive.node"):
        assert not plain_echo(node.node.tls_port)
    assert any("TLS handshake with 127.0.0.1" in r.getMessage() for r in caplog.records)
    assert plain_echo(node.node.port), "the plain listener serves beside it"
    done = storescu_tls(node.node.tls_port, slices, trusted=[pki.ca.cert_file], client=None)
    assert done.returncode == 0, done.stderr


def test_a_silent_connection_does_not_stall_the_tls_listener(
    start_node: StartNode, pki: Pki, slices: list[Path]
) -> None:
    """pynetdicom's own server handshakes in its accept loop; ours in the connection's
    thread, so a client that connects and says nothing delays no one."""
    node = start_node()
    with socket.create_connection(("127.0.0.1", node.node.tls_port)):
        time.sleep(0.2)
        started = time.monotonic()
        done = storescu_tls(node.node.tls_port, slices, trusted=[pki.ca.cert_file], client=None)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 10


def test_a_silent_tls_connection_lets_go_when_the_node_stops(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node()
    with (
        caplog.at_level(logging.WARNING, logger="router.receive.node"),
        socket.create_connection(("127.0.0.1", node.node.tls_port)),
    ):
        time.sleep(0.3)
        node.node.stop()
        deadline = time.monotonic() + 3
        while not any("the node is stopping" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the handshake did not let go"
            time.sleep(0.05)


def test_tls_only_node_has_no_plain_listener(tmp_path: Path, pki: Pki) -> None:
    config = NodeConfig(
        bind="127.0.0.1",
        port=None,
        tls=NodeTlsConfig(port=free_port(), cert_file=pki.server.cert, key_file=pki.server.key),
    )
    db = SqliteDatabase(tmp_path / "db.sqlite3")
    node = DicomNode(config, make_ingestor(db, tmp_path), AssociationTracker(db), lambda: None)
    node.start()
    try:
        assert list(node.listening_ports()) == ["dicom_tls"]
    finally:
        node.stop()


def test_node_with_a_key_that_is_not_its_certificates_does_not_start(
    tmp_path: Path, pki: Pki
) -> None:
    config = NodeConfig(
        bind="127.0.0.1",
        port=free_port(),
        tls=NodeTlsConfig(port=free_port(), cert_file=pki.server.cert, key_file=pki.ct1.key),
    )
    db = SqliteDatabase(tmp_path / "db.sqlite3")
    node = DicomNode(config, make_ingestor(db, tmp_path), AssociationTracker(db), lambda: None)
    with pytest.raises(TlsSetupError, match="not the certificate's"):
        node.start()
    assert node.listening_ports() == {}, "nothing listens, not even the plain port"
    node.stop()
