"""Real DICOM files (pydicom's test files, the pydicom-data wheel) are received byte-exact."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from pynetdicom import AE
from pynetdicom.presentation import build_context

from config.schema import NodeConfig
from router.receive.ingest import StoreStatus
from router.receive.node import AssociationTracker, DicomNode
from router.store.database import Database, SqliteDatabase
from testing.corpus import CorpusFile, real_corpus
from testing.dicom_node import make_ingestor
from testing.orthanc import free_port
from testing.storescp import DCMTK_ENV

CORPUS = real_corpus()
STORABLE = [item for item in CORPUS if item.has_study_and_series_uids]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DicomNode, Database]]:
    root = tmp_path_factory.mktemp("node")
    db = SqliteDatabase(root / "db.sqlite3")
    dicom_node = DicomNode(
        NodeConfig(bind="127.0.0.1", port=free_port()),
        make_ingestor(db, root),
        AssociationTracker(db),
        lambda: None,
    )
    dicom_node.start()
    yield dicom_node, db
    dicom_node.stop()


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the preamble and file meta (if any): what C-STORE carries."""
    with path.open("rb") as handle:
        read_preamble(handle, True)
        _read_file_meta_info(handle)
        return handle.read()


def test_the_corpus_covers_the_transfer_syntaxes_the_issue_names() -> None:
    syntaxes = {item.transfer_syntax_uid for item in CORPUS}
    for uid in (
        "1.2.840.10008.1.2",  # implicit
        "1.2.840.10008.1.2.1",  # explicit
        "1.2.840.10008.1.2.1.99",  # deflate
        "1.2.840.10008.1.2.5",  # RLE
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.70",  # JPEG lossless
        "1.2.840.10008.1.2.4.80",  # JPEG-LS
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
    ):
        assert uid in syntaxes, uid
    classes = {item.sop_class_uid for item in CORPUS}
    assert "1.2.840.10008.5.1.4.1.1.2.1" in classes, "an enhanced CT"
    assert "1.2.840.10008.5.1.4.1.1.1" in classes, "a CR"


# dcmtk storescu's option that proposes each file's own transfer syntax.
PROPOSE_FLAG = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}


def storescu(port: int, aet: str, item: CorpusFile) -> None:
    result = subprocess.run(
        [
            "/usr/bin/storescu",
            "-R",
            PROPOSE_FLAG[item.transfer_syntax_uid],
            "-aet",
            "DCMTK",
            "-aec",
            aet,
            "127.0.0.1",
            str(port),
            str(item.path),
        ],
        capture_output=True,
        env=DCMTK_ENV,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]


@pytest.fixture(scope="module")
def wire_reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp writing exactly what it received (--bit-preserving): the wire bytes."""
    out = tmp_path_factory.mktemp("storescp")
    port = free_port()
    process = subprocess.Popen(
        ["/usr/bin/storescp", "+B", "+xa", "-aet", "STORESCP", "-od", str(out), str(port)],
        env=DCMTK_ENV,
    )
    time.sleep(0.5)
    yield port, out
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.parametrize("item", STORABLE, ids=lambda item: item.name)
def test_each_real_file_is_stored_exactly_as_it_came_over_the_wire(
    node: tuple[DicomNode, Database], wire_reference: tuple[int, Path], item: CorpusFile
) -> None:
    dicom_node, db = node
    storescu(dicom_node.port, "RADROUTER", item)
    reference_port, reference_dir = wire_reference
    storescu(reference_port, "STORESCP", item)
    uid = str(pydicom.dcmread(item.path, stop_before_pixels=True).SOPInstanceUID)
    row = db.query_one("SELECT * FROM instances WHERE sop_instance_uid = ?", (uid,))
    assert row is not None
    assert row["transfer_syntax_uid"] == item.transfer_syntax_uid
    received_by_dcmtk = [p for p in reference_dir.iterdir() if p.name.endswith(uid)]
    assert len(received_by_dcmtk) == 1
    assert dataset_bytes(Path(row["path"])) == dataset_bytes(received_by_dcmtk[0])
    # And the content is the original's, pixel data included.
    ours, original = pydicom.dcmread(row["path"]), pydicom.dcmread(item.path)
    assert ours.get("PixelData") == original.get("PixelData")


def test_a_file_without_study_or_series_uid_is_refused_with_a_status(
    node: tuple[DicomNode, Database],
) -> None:
    refused = [item for item in CORPUS if not item.has_study_and_series_uids]
    assert refused, "the corpus has such a file"
    dicom_node, _ = node
    item = refused[0]
    ae = AE(ae_title="CORPUS")
    ae.requested_contexts.append(build_context(item.sop_class_uid, [item.transfer_syntax_uid]))
    assoc = ae.associate("127.0.0.1", dicom_node.port, ae_title="RADROUTER")
    status = assoc.send_c_store(item.path)
    assoc.release()
    assert int(status.Status) == StoreStatus.CANNOT_UNDERSTAND
