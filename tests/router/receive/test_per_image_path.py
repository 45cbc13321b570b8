"""The per-image path trimmed without changing what it stores: the file meta built once per
SOP class and transfer syntax, the header walked from the bytes in memory, the fsync started
in the background, fewer statements per index row."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from router.receive import dataset_stream
from router.receive.dataset_stream import (
    IN_MEMORY_BYTES,
    AssociationStreams,
    _Sink,
    file_meta,
    sync_in_background,
)
from router.receive.ingest import HEADER_TAGS, Origin
from router.receive.spool import Spool
from router.receive.status import IngestError, StoreStatus
from router.receive.structure import read_structure
from router.store.database import SqliteDatabase
from testing.dicom_node import make_ingestor, running_node
from testing.dicom_tools import make_ct_slices


def pynetdicom_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    return encode_file_meta(
        create_file_meta(
            sop_class_uid=UID(sop_class),
            sop_instance_uid=UID(sop_instance),
            transfer_syntax=UID(transfer_syntax),
        )
    )


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.5",
    ],
)
@pytest.mark.parametrize("sop_instance", ["1.2.3", "1.2.34", "2.25." + "9" * 59, "1.2.840.1"])
def test_file_meta_is_pynetdicoms_byte_for_byte(transfer_syntax: str, sop_instance: str) -> None:
    for _ in range(2):  # built, then from the cache
        meta = file_meta(CTImageStorage, sop_instance, transfer_syntax)
        assert meta == pynetdicom_meta(CTImageStorage, sop_instance, transfer_syntax)


def test_file_meta_is_kept_per_sop_class_and_transfer_syntax() -> None:
    """Two presentation contexts of one SOP class in two transfer syntaxes (and another SOP
    class) each get their own meta, whichever was built first."""
    dataset_stream._META_CACHE.clear()
    instances = [generate_uid() for _ in range(3)]
    contexts = [
        (CTImageStorage, ExplicitVRLittleEndian),
        (CTImageStorage, ImplicitVRLittleEndian),
        (MRImageStorage, ExplicitVRLittleEndian),
    ]
    for sop_instance in instances:
        for sop_class, transfer_syntax in contexts:
            meta = file_meta(sop_class, sop_instance, transfer_syntax)
            assert meta == pynetdicom_meta(sop_class, sop_instance, transfer_syntax)
            modality = (  # Modality CT, in the transfer syntax's encoding
                b"\x08\x00\x60\x00\x02\x00\x00\x00CT"
                if transfer_syntax == ImplicitVRLittleEndian
                else b"\x08\x00\x60\x00CS\x02\x00CT"
            )
            read = pydicom.dcmread(io.BytesIO(b"\0" * 128 + b"DICM" + meta + modality)).file_meta
            assert read.TransferSyntaxUID == transfer_syntax
            assert read.MediaStorageSOPClassUID == sop_class
            assert read.MediaStorageSOPInstanceUID == sop_instance
    assert set(dataset_stream._META_CACHE) == set(contexts)


def part10(ds: pydicom.Dataset, transfer_syntax: str) -> bytes:
    ds = ds.copy()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    buffer = io.BytesIO()
    ds.save_as(
        buffer,
        implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
        little_endian=transfer_syntax != ExplicitVRBigEndian,
        enforce_file_format=True,
    )
    return buffer.getvalue()


def walk(path: Path, data: bytes | None) -> object:
    try:
        return read_structure(
            path,
            wanted=HEADER_TAGS,
            max_depth=8,
            max_inflated_bytes=2**26,
            scratch_dir=path.parent,
            data=data,
        )
    except IngestError as exc:
        return (exc.status, exc.reason)


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ],
)
def test_header_walked_in_memory_equals_the_one_read_from_the_file(
    tmp_path: Path, transfer_syntax: str
) -> None:
    ds = make_ct_slices(1, rows=16, cols=16)[0]
    ds.ReferencedImageSequence = [pydicom.Dataset()]
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    whole = part10(ds, transfer_syntax)
    cut = whole[: len(whole) - 7]  # pixel data cut short: refused the same way
    path = tmp_path / "instance.dcm"
    results = []
    for data in (whole, cut):
        path.write_bytes(data)
        from_file = walk(path, None)
        assert walk(path, data) == from_file
        results.append(from_file)
    accepted, refused = results
    assert not isinstance(accepted, tuple)
    assert isinstance(refused, tuple) and refused[0] is StoreStatus.CANNOT_UNDERSTAND


def test_sink_keeps_a_small_data_set_in_memory_and_starts_its_fsync(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    body = b"\x08\x00\x60\x00CS\x02\x00CT"
    sink = _Sink(spool, 2**30, 1, CTImageStorage, "1.2.3", ExplicitVRLittleEndian)
    sink.add(memoryview(b"\x00" + body)[1:])
    received = sink.finish()
    assert received.path is not None and received.synced is not None
    received.synced.result(timeout=10)
    on_disk = received.path.read_bytes()
    assert received.data == on_disk
    assert on_disk[received.body_offset :] == body
    assert received.sha256 == hashlib.sha256(on_disk).hexdigest()

    big = _Sink(spool, 2**30, 2, CTImageStorage, "1.2.4", ExplicitVRLittleEndian)
    chunk = b"\x00" * (IN_MEMORY_BYTES // 2)
    for _ in range(3):
        big.add(chunk)
    large = big.finish()
    assert large.data is None  # past IN_MEMORY_BYTES: the checks read the file
    assert large.path is not None and large.path.stat().st_size == large.body_offset + 3 * len(
        chunk
    )
    assert large.sha256 == hashlib.sha256(large.path.read_bytes()).hexdigest()


def test_index_rows_as_before(tmp_path: Path) -> None:
    """New instance, the same bytes again, new bytes for it, a second association, a late
    instance after completion: counts, association rows, reopening as they always were."""
    db = SqliteDatabase(tmp_path / "db.sqlite3")
    ingestor = make_ingestor(db, tmp_path)
    slices = make_ct_slices(2, rows=8, cols=8)
    study = str(slices[0].StudyInstanceUID)
    series = str(slices[0].SeriesInstanceUID)
    first, second = (part10(ds, ExplicitVRLittleEndian) for ds in slices)
    one = Origin("assoc-1", "SCU", "RADROUTER")
    assert not ingestor.ingest(first, one, None).duplicate
    assert ingestor.ingest(first, one, None).duplicate
    assert not ingestor.ingest(second, one, None).duplicate
    count = "SELECT instance_count FROM series WHERE series_uid = ?"
    assert db.query_one(count, (series,))["instance_count"] == 2  # type: ignore[index]
    changed = slices[1].copy()
    changed.InstanceNumber = 99
    assert not ingestor.ingest(part10(changed, ExplicitVRLittleEndian), one, None).duplicate
    assert db.query_one(count, (series,))["instance_count"] == 2  # type: ignore[index]
    two = Origin("assoc-2", "SCU", "RADROUTER")
    ingestor.ingest(first, two, None)
    rows = db.query("SELECT association_id FROM association_studies WHERE study_uid = ?", (study,))
    assert sorted(r["association_id"] for r in rows) == ["assoc-1", "assoc-2"]

    db.connection().execute(
        "UPDATE studies SET state = 'done', completed_at = 1 WHERE study_uid = ?", (study,)
    )
    late = make_ct_slices(1, rows=8, cols=8)[0]
    late.StudyInstanceUID, late.SeriesInstanceUID = study, series
    outcome = ingestor.ingest(part10(late, ExplicitVRLittleEndian), one, None)
    assert outcome.reopened
    row = db.query_one(
        "SELECT state, revision, completed_at FROM studies WHERE study_uid = ?", (study,)
    )
    assert row is not None and (row["state"], row["revision"], row["completed_at"]) == (
        "receiving",
        2,
        None,
    )
    assert db.query_one(count, (series,))["instance_count"] == 3  # type: ignore[index]
    events = db.query("SELECT kind FROM events WHERE study_uid = ?", (study,))
    assert [e["kind"] for e in events] == ["study_reopened"]


def test_instances_over_the_node_are_stored_as_sent(tmp_path: Path) -> None:
    """Through the node, in two transfer syntaxes on one association: each spool file is the
    data set as sent behind the meta pynetdicom would write, walked from memory."""
    slices = make_ct_slices(4, rows=32, cols=32)
    with running_node(tmp_path / "node") as node:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", node.port, ae_title="RADROUTER")
        assert assoc.is_established
        for index, ds in enumerate(slices):
            syntax = ImplicitVRLittleEndian if index % 2 else ExplicitVRLittleEndian
            ds.file_meta.TransferSyntaxUID = UID(syntax)
            status = assoc.send_c_store(ds)
            assert int(status.Status) == 0
        assoc.release()
        rows = node.db.query(
            "SELECT sop_instance_uid, path, transfer_syntax_uid, sha256 FROM instances"
        )
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    for index, ds in enumerate(slices):
        row = by_uid[str(ds.SOPInstanceUID)]
        data = Path(row["path"]).read_bytes()
        syntax = ImplicitVRLittleEndian if index % 2 else ExplicitVRLittleEndian
        assert row["transfer_syntax_uid"] == syntax
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        meta = pynetdicom_meta(CTImageStorage, str(ds.SOPInstanceUID), syntax)
        assert data[132 : 132 + len(meta)] == meta
        read = pydicom.dcmread(io.BytesIO(data))
        assert read.SOPInstanceUID == ds.SOPInstanceUID
        assert read.pixel_array.shape == (32, 32)


def test_fsync_in_background_only_while_one_association_receives(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")

    def association() -> Any:
        return SimpleNamespace(dimse=SimpleNamespace(receive_primitive=lambda primitive: None))

    base = dataset_stream._count_receiving(0)  # others' (none, unless a test left one open)
    first = AssociationStreams.install(association(), spool, 2**20)
    assert dataset_stream._count_receiving(0) == base + 1
    second = AssociationStreams.install(association(), spool, 2**20)
    if base == 0:
        assert not sync_in_background()
    second.close()
    second.close()  # once only
    assert dataset_stream._count_receiving(0) == base + 1
    if base == 0:
        assert sync_in_background()
    first.close()
    assert dataset_stream._count_receiving(0) == base
