"""The DICOM node over loopback: echo, store (dcmtk and pynetdicom), access control, bad input."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from config.schema import AllowedCaller, NodeConfig
from router.receive.ingest import StoreStatus
from router.receive.node import AssociationTracker, DicomNode
from router.receive.spool import Spool
from router.store.database import Database, SqliteDatabase
from testing.dicom_node import make_ingestor
from testing.dicom_tools import make_ct_slices
from testing.orthanc import free_port
from testing.storescp import DCMTK_ENV


@dataclass
class Node:
    node: DicomNode
    db: Database
    spool: Spool
    port: int
    allowed: list[AllowedCaller] | None


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    db = SqliteDatabase(tmp_path / "db.sqlite3")
    ingestor = make_ingestor(db, tmp_path)
    holder = Node(None, db, ingestor.spool, free_port(), None)  # type: ignore[arg-type]
    config = NodeConfig(ae_title="RADROUTER", bind="127.0.0.1", port=holder.port)
    dicom_node = DicomNode(
        config,
        ingestor,
        AssociationTracker(db),
        lambda: holder.allowed,
    )
    dicom_node.start()
    holder.node = dicom_node
    yield holder
    dicom_node.stop()


def write_slices(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in make_ct_slices(n):
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta group: what travels in C-STORE."""
    raw = path.read_bytes()
    meta_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + meta_length :]


def send_raw(port: int, path: Path, calling: str = "TESTSCU", called: str = "RADROUTER") -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    status = assoc.send_c_store(path)
    assoc.release()
    return int(status.Status)


def send_raw_payload(port: int, payload: bytes) -> int:
    """C-STORE arbitrary bytes as the dataset, below pynetdicom's own checks."""
    from io import BytesIO

    from pydicom.uid import generate_uid
    from pynetdicom.dimse_primitives import C_STORE

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="RADROUTER")
    assert assoc.is_established
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = generate_uid()
    request.Priority = 2
    request.DataSet = BytesIO(payload)
    context_id = assoc.accepted_contexts[0].context_id
    assert context_id is not None
    assoc._reactor_checkpoint.clear()  # pause the reactor, as send_c_store itself does
    while not assoc._is_paused:
        time.sleep(0.0001)
    assoc.dimse.send_msg(request, context_id)
    _, response = assoc.dimse.get_msg(block=True)
    assoc._reactor_checkpoint.set()
    assoc.release()
    assert response is not None and response.Status is not None
    return int(response.Status)


def echo(port: int, calling: str = "TESTSCU", called: str = "RADROUTER") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0


def test_dcmtk_echoscu_gets_an_answer(node: Node) -> None:
    result = subprocess.run(
        ["/usr/bin/echoscu", "-aec", "RADROUTER", "127.0.0.1", str(node.port)],
        capture_output=True,
        env=DCMTK_ENV,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_dcmtk_storescu_series_is_spooled_byte_exact_and_indexed(
    node: Node, tmp_path: Path
) -> None:
    paths = write_slices(tmp_path / "in", 12)
    result = subprocess.run(
        [
            "/usr/bin/storescu",
            "-aet",
            "DCMTKSCU",
            "-aec",
            "RADROUTER",
            "127.0.0.1",
            str(node.port),
            *map(str, paths),
        ],
        capture_output=True,
        env=DCMTK_ENV,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = node.db.query("SELECT * FROM instances")
    assert len(rows) == 12
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = by_uid[ds.SOPInstanceUID]
        assert row["calling_ae"] == "DCMTKSCU"
        assert dataset_bytes(Path(row["path"])) == dataset_bytes(path)
    associations = node.db.query("SELECT state, calling_ae FROM associations")
    assert [(a["state"], a["calling_ae"]) for a in associations] == [("released", "DCMTKSCU")]
    assert node.db.query_one("SELECT instance_count FROM series")["instance_count"] == 12  # type: ignore[index]


def test_same_sop_instance_twice_is_idempotent(node: Node, tmp_path: Path) -> None:
    path = write_slices(tmp_path / "in", 1)[0]
    assert send_raw(node.port, path) == StoreStatus.SUCCESS
    assert send_raw(node.port, path) == StoreStatus.SUCCESS
    assert len(node.db.query("SELECT * FROM instances")) == 1
    assert node.db.query_one("SELECT instance_count FROM series")["instance_count"] == 1  # type: ignore[index]
    assert len(node.spool.iter_files()) == 1


def test_calling_ae_not_in_allow_list_is_rejected_and_recorded(node: Node) -> None:
    node.allowed = [AllowedCaller(ae_title="PACS", host="127.0.0.1")]
    assert not echo(node.port, calling="INTRUDER")
    assert echo(node.port, calling="PACS")
    node.allowed = [AllowedCaller(ae_title="PACS", host="10.9.9.9")]
    assert not echo(node.port, calling="PACS"), "right AE from the wrong host must be refused"
    events = node.db.query("SELECT detail FROM events WHERE kind = 'association_rejected'")
    assert any("INTRUDER" in e["detail"] for e in events)


def test_wrong_called_ae_is_rejected(node: Node) -> None:
    assert not echo(node.port, called="SOMEONEELSE")
    assert echo(node.port)


def test_truncated_dataset_is_refused_quarantined_and_node_keeps_serving(
    node: Node, tmp_path: Path
) -> None:
    path = write_slices(tmp_path / "in", 1)[0]
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    meta_length = int.from_bytes(raw[140:144], "little")
    truncated.write_bytes(raw[: 144 + meta_length + 200])  # header cut mid-element
    status = send_raw(node.port, truncated)
    assert status != StoreStatus.SUCCESS
    assert node.db.query("SELECT * FROM instances") == []
    assert list((tmp_path / "quarantine").glob("*.reason.txt"))
    assert echo(node.port)


def test_non_dicom_bytes_are_refused_and_node_keeps_serving(node: Node, tmp_path: Path) -> None:
    status = send_raw_payload(node.port, b"%PDF-1.7 this is not a DICOM dataset" + os.urandom(4000))
    assert status == StoreStatus.CANNOT_UNDERSTAND
    assert node.db.query("SELECT * FROM instances") == []
    assert echo(node.port)


def test_unwritable_spool_returns_out_of_resources_not_a_crash(node: Node, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        node.spool.min_free_bytes = 2**62  # root ignores permissions: simulate a full disk
    else:
        node.spool.root.chmod(0o500)
    path = write_slices(tmp_path / "in", 1)[0]
    assert send_raw(node.port, path) == StoreStatus.OUT_OF_RESOURCES
    assert node.db.query("SELECT * FROM instances") == []
    node.spool.min_free_bytes = 0
    node.spool.root.chmod(0o700)
    assert send_raw(node.port, path) == StoreStatus.SUCCESS
