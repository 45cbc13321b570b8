"""C-FIND for priors over DICOM TLS: the association to a prior source is made with the
source's TLS settings (its CA, radrouter's client certificate, the name to check), here
against a pynetdicom query SCP that requires a client certificate."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from config.schema import PriorSource
from router.run.priors.query_retrieve import PriorRetrievalError, _association, query_studies
from router.run.priors.selection import CurrentStudy
from testing.tls import CertificateAuthority, IssuedCertificate

PRIOR_STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


@dataclass
class QueryScp:
    port: int
    ca: CertificateAuthority
    client: IssuedCertificate
    seen: list[dict[str, Any]] = field(default_factory=list)
    """Per C-FIND: the TLS version and the client certificate's subject."""


@pytest.fixture
def query_scp(tmp_path: Path) -> Iterator[QueryScp]:
    ca = CertificateAuthority.create(tmp_path / "pki")
    server = ca.issue("pacs")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca.cert_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(server.cert, server.key)
    scp = QueryScp(0, ca, ca.issue("radrouter", common_name="radrouter.hospital.example"))

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        sock = event.assoc.dul.socket.socket
        scp.seen.append({"version": sock.version(), "subject": sock.getpeercert()["subject"]})
        found = Dataset()
        found.QueryRetrieveLevel = "STUDY"
        found.StudyInstanceUID = PRIOR_STUDY_UID
        found.StudyDate = "20240101"
        found.StudyTime = "101500"
        yield 0xFF00, found

    ae = AE(ae_title="PACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    server_ = ae.start_server(
        ("127.0.0.1", 0), block=False, ssl_context=context, evt_handlers=[(evt.EVT_C_FIND, on_find)]
    )
    assert server_ is not None
    scp.port = int(server_.server_address[1])
    yield scp
    ae.shutdown()


def source(scp: QueryScp, **tls: object) -> PriorSource:
    return PriorSource.model_validate(
        {
            "ae_title": "PACS",
            "host": "127.0.0.1",
            "port": scp.port,
            "timeout_s": 5,
            "tls": {
                "ca_file": scp.ca.cert_file,
                "cert_file": scp.client.cert,
                "key_file": scp.client.key,
                **tls,
            },
        }
    )


CURRENT = CurrentStudy("SYN-TLS", "20240610", "1.2.826.0.1.3680043.8.498.2")


def test_c_find_runs_over_tls_with_the_sources_certificates(query_scp: QueryScp) -> None:
    with _association(source(query_scp), "RADROUTER") as assoc:
        found = query_studies(assoc, CURRENT, 3 * 365)
    assert [c.study_instance_uid for c in found] == [PRIOR_STUDY_UID]
    (seen,) = query_scp.seen
    assert seen["version"] in ("TLSv1.2", "TLSv1.3")
    assert (("commonName", "radrouter.hospital.example"),) in seen["subject"]


def test_source_whose_certificate_is_for_another_name_is_refused(query_scp: QueryScp) -> None:
    with (
        pytest.raises(PriorRetrievalError, match="Hostname mismatch"),
        _association(source(query_scp, server_name="pacs.elsewhere.example"), "RADROUTER"),
    ):
        pass
    assert query_scp.seen == []


def test_plain_association_to_a_tls_source_fails(query_scp: QueryScp) -> None:
    plain = source(query_scp).model_copy(update={"tls": None})
    with (
        pytest.raises(PriorRetrievalError, match="no association"),
        _association(plain, "RADROUTER"),
    ):
        pass
