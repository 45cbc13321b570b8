"""DICOM TLS: the BCP 195 contexts (TLS 1.2 or later, the recommended TLS 1.2 suites only),
and the whole router over TLS: dcmtk's storescu sends a study to the node's TLS port with a
client certificate, the router processes it and sends the result over TLS to dcmtk's
storescp in TLS mode."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from algorithms.registry import Registry
from config.schema import DicomTlsClient, NodeTlsConfig
from router.dicom_tls import outgoing_tls, server_context
from testing.orthanc import free_port
from testing.plugins import AlwaysNegative
from testing.router_process import StartRouter, study_uid_of, wait_state, write_series
from testing.tls import CertificateAuthority, running_tls_storescp, storescu_tls


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_server(ca: CertificateAuthority) -> Iterator[int]:
    """A loopback TLS server with radrouter's node context; it handshakes and closes."""
    server = ca.issue("node")
    context = server_context(NodeTlsConfig(cert_file=server.cert, key_file=server.key))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(5)
            try:
                with context.wrap_socket(client, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    listener.close()
    thread.join(5)


def handshake(port: int, context: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return f"{tls.version()} {tls.cipher()[0]}"  # type: ignore[index]


def client(ca: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca.cert_file)


def test_node_context_speaks_tls_1_3_and_the_bcp195_tls_1_2_suites(
    ca: CertificateAuthority, tls_server: int
) -> None:
    assert handshake(tls_server, client(ca)).startswith("TLSv1.3")
    tls12 = client(ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    for suite in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"):
        tls12.set_ciphers(suite)
        assert handshake(tls_server, tls12) == f"TLSv1.2 {suite}"


@pytest.mark.parametrize(
    "suite", ["ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256", "DHE-RSA-AES128-GCM-SHA256"]
)
def test_node_context_refuses_tls_1_2_suites_bcp195_does_not_recommend(
    ca: CertificateAuthority, tls_server: int, suite: str
) -> None:
    """CBC, RSA key transport and finite-field DHE (RFC 9325 section 4.1, 4.2)."""
    tls12 = client(ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    tls12.set_ciphers(suite)
    with pytest.raises(ssl.SSLError, match=r"(?i)handshake.failure"):  # the server's alert
        handshake(tls_server, tls12)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_node_context_refuses_tls_1_1(ca: CertificateAuthority, tls_server: int) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(ca.cert_file)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")  # so that this client really offers TLS 1.1
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol.version"):  # the server's alert
        handshake(tls_server, old)


def test_outgoing_context_verifies_the_peer_and_its_name(ca: CertificateAuthority) -> None:
    outgoing = outgoing_tls(DicomTlsClient(ca_file=ca.cert_file), "10.0.0.5")
    assert outgoing.context.verify_mode is ssl.CERT_REQUIRED
    assert outgoing.context.check_hostname
    assert outgoing.context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert outgoing.tls_args == (outgoing.context, "10.0.0.5")
    assert len(outgoing.context.get_ca_certs()) == 1, "only the CA given, not the system's"
    named = outgoing_tls(DicomTlsClient(ca_file=ca.cert_file, server_name="pacs.example"), "h")
    assert named.server_name == "pacs.example"


@pytest.mark.slow
def test_study_over_tls_is_processed_and_its_result_sent_over_tls(
    start_router: StartRouter, ca: CertificateAuthority, tmp_path: Path
) -> None:
    node, pacs_certificate = ca.issue("radrouter-node"), ca.issue("pacs")
    radrouter = ca.issue("radrouter-client", common_name="radrouter.hospital.example")
    ct1 = ca.issue("ct1", common_name="ct1.hospital.example")
    with running_tls_storescp(tmp_path / "pacs", pacs_certificate, [ca.cert_file]) as pacs:
        tls_port = free_port()
        router = start_router(
            "node:\n"
            "  ae_title: RADROUTER\n"
            "  bind: 127.0.0.1\n"
            "  port: {port}\n"
            "  tls:\n"
            f"    port: {tls_port}\n"
            f"    cert_file: {node.cert}\n"
            f"    key_file: {node.key}\n"
            f"    client_ca_file: {ca.cert_file}\n"
            "    client_certificates:\n"
            "      - {subject_cn: ct1.hospital.example, ae_titles: [CT1]}\n"
            "http: {host: 127.0.0.1, port: 0}\n"
            "destinations:\n"
            "  pacs:\n"
            f"    {{ae_title: STORESCP, host: 127.0.0.1, port: {pacs.port}, timeout_s: 10,\n"
            f"     tls: {{ca_file: {ca.cert_file}, cert_file: {radrouter.cert},\n"
            f"           key_file: {radrouter.key}}}}}\n"
            "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, "
            "hard_cap_s: 60}\n"
            "rules:\n"
            "  - name: any-ct\n"
            "    when: {Modality: CT}\n"
            "    run: always_negative\n"
            "    send_to: [pacs]\n",
            registry=Registry({"always_negative": AlwaysNegative}),
        )
        ready = httpx.get(f"http://127.0.0.1:{router.http_port}/readyz", timeout=10).json()
        assert ready["dicom_tls_port"] == tls_port, ready
        paths = write_series(tmp_path / "ct", 6)
        done = storescu_tls(tls_port, paths, trusted=[ca.cert_file], client=ct1, calling="CT1")
        assert done.returncode == 0, done.stderr
        study_uid = study_uid_of(paths)
        view = wait_state(router, study_uid, {"done"})
        assert [j["state"] for j in view["jobs"]] == ["done"]
        assert pacs.wait_for("SR", {study_uid}, timeout_s=60)[study_uid]
