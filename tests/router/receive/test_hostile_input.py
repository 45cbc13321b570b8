"""Hostile or broken instances over real associations: each is refused with the status that
says why (never "out of resources", which a PACS retries forever), quarantined with a reason
that quotes no value, and nothing reaches a path outside the data folder."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)

from dicom_sr.uids import is_valid_uid
from router.receive.spool import InvalidUidError, Spool
from router.receive.status import StoreStatus
from testing.dicom_node import NodeUnderTest, echo, running_node, send_payload, store_association
from testing.dicom_tools import make_ct_slices
from testing.fuzz import encode, files_under


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeUnderTest]:
    with running_node(tmp_path / "data") as running:
        yield running


def ct(**values: object) -> Dataset:
    ds = make_ct_slices(1, rows=16, cols=16)[0]
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def store(
    node: NodeUnderTest,
    payload: bytes,
    ds: Dataset,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    context_class: str = CTImageStorage,
    request_class: str | None = None,
    request_instance: str | None = None,
) -> int | None:
    assoc = store_association(node.port, (context_class,), transfer_syntax)
    try:
        return send_payload(
            assoc,
            payload,
            sop_class_uid=request_class or context_class,
            sop_instance_uid=request_instance or str(ds.SOPInstanceUID),
        )
    finally:
        assoc.release()


def with_vr(payload: bytes, tag: int, vr: bytes) -> bytes:
    """``payload`` (explicit VR little endian) with the VR code of top-level ``tag`` replaced."""
    marker = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    at = payload.index(marker)
    return payload[: at + 4] + vr + payload[at + 6 :]


def reasons(node: NodeUnderTest) -> list[str]:
    return [p.read_text() for p in sorted(node.quarantine.glob("*.reason.txt"))]


def assert_refused(node: NodeUnderTest, status: int | None, expected: StoreStatus) -> None:
    assert status == expected, f"0x{status or 0:04X}, expected {expected.name}"
    assert node.db.query("SELECT * FROM instances") == []
    assert any(expected.name in reason for reason in reasons(node)), reasons(node)
    assert echo(node.port), "the node keeps serving"


# --- UIDs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uid", ["..", ".", "", "1..2", "1.2.", ".1.2", "01.2", "1.02", "1.2/3", "1.2\\3", "1" * 65]
)
def test_only_a_dicom_uid_can_name_a_spool_path(tmp_path: Path, uid: str) -> None:
    assert not is_valid_uid(uid)
    spool = Spool(tmp_path / "spool")
    with pytest.raises(InvalidUidError, match="StudyInstanceUID is not a DICOM UID"):
        spool.path_for(uid, "1.2.3", "1.2.3.4")
    with pytest.raises(InvalidUidError, match="SeriesInstanceUID"):
        spool.path_for("1.2.3", uid, "1.2.3.4")
    with pytest.raises(InvalidUidError, match="SOPInstanceUID"):
        spool.path_for("1.2.3", "1.2.4", uid)


def test_dot_dot_study_and_series_uids_are_refused_and_nothing_lands_outside_the_data_folder(
    node: NodeUnderTest, tmp_path: Path
) -> None:
    before = files_under(tmp_path)
    ds = ct(StudyInstanceUID="..", SeriesInstanceUID="..")
    status = store(node, encode(ds, ExplicitVRLittleEndian), ds)
    assert_refused(node, status, StoreStatus.INVALID_UID)
    new = files_under(tmp_path) - before
    assert all(node.root in path.parents for path in new), sorted(new)
    assert not list(tmp_path.glob("*.dcm")) and not list(node.root.glob("*.dcm"))
    assert ".." not in "".join(reasons(node)), "the reason names the attribute, not its value"


def test_a_request_whose_affected_sop_instance_uid_is_dot_dot_is_refused_unkept(
    node: NodeUnderTest,
) -> None:
    ds = ct()
    status = store(node, encode(ds, ExplicitVRLittleEndian), ds, request_instance="..")
    assert_refused(node, status, StoreStatus.INVALID_UID)
    assert not list(node.quarantine.glob("*.bin"))


# --- values that cannot be decoded -----------------------------------------------------------


def test_an_unknown_vr_code_in_an_attribute_the_node_reads_is_cannot_understand_not_0xa700(
    node: NodeUnderTest,
) -> None:
    ds = ct()
    payload = with_vr(encode(ds, ExplicitVRLittleEndian), 0x00080060, b"ZZ")  # Modality
    assert_refused(node, store(node, payload, ds), StoreStatus.CANNOT_UNDERSTAND)
    assert list(node.quarantine.glob("*.bin")), "the bytes are kept to look into"


def test_an_unknown_vr_code_in_the_accession_number_is_refused_and_quarantined(
    node: NodeUnderTest,
) -> None:
    ds = ct()
    payload = with_vr(encode(ds, ExplicitVRLittleEndian), 0x00080050, b"ZZ")
    assert_refused(node, store(node, payload, ds), StoreStatus.CANNOT_UNDERSTAND)
    assert any("AccessionNumber" in reason for reason in reasons(node))


@pytest.mark.parametrize("vr", [b"\x00\x01", b"\xff\xfe", b"s1"])
def test_a_vr_that_is_not_two_capital_letters_is_cannot_understand_and_quarantined(
    node: NodeUnderTest, vr: bytes
) -> None:
    ds = ct()
    payload = with_vr(encode(ds, ExplicitVRLittleEndian), 0x00080060, vr)
    assert_refused(node, store(node, payload, ds), StoreStatus.CANNOT_UNDERSTAND)


def test_sequences_nested_deeper_than_the_limit_are_refused(node: NodeUnderTest) -> None:
    ds = ct()
    item = Dataset()
    item.CodeValue = "1"
    for _ in range(40):
        outer = Dataset()
        outer.ContentSequence = Sequence([item])
        item = outer
    ds.ContentSequence = item.ContentSequence
    assert_refused(
        node, store(node, encode(ds, ExplicitVRLittleEndian), ds), StoreStatus.SEQUENCE_TOO_DEEP
    )


# --- pixel data ------------------------------------------------------------------------------


def test_pixel_data_shorter_than_the_image_is_refused_and_quarantined(node: NodeUnderTest) -> None:
    ds = ct()
    ds.PixelData = ds.PixelData[:100]
    status = store(node, encode(ds, ExplicitVRLittleEndian), ds)
    assert_refused(node, status, StoreStatus.PIXEL_DATA_INCOMPLETE)


def test_empty_pixel_data_is_refused(node: NodeUnderTest) -> None:
    ds = ct()
    ds.PixelData = b""
    status = store(node, encode(ds, ExplicitVRLittleEndian), ds)
    assert_refused(node, status, StoreStatus.PIXEL_DATA_INCOMPLETE)


def test_a_data_set_cut_inside_its_pixel_data_is_refused(node: NodeUnderTest) -> None:
    ds = ct()
    payload = encode(ds, ExplicitVRLittleEndian)[:-200]
    assert_refused(node, store(node, payload, ds), StoreStatus.CANNOT_UNDERSTAND)


# --- the data set against its request, context and file meta ---------------------------------


def test_an_mr_data_set_on_a_ct_context_is_refused_with_0xa900(node: NodeUnderTest) -> None:
    mr = ct(Modality="MR", SOPClassUID=MRImageStorage)
    status = store(node, encode(mr, ExplicitVRLittleEndian), mr, request_class=CTImageStorage)
    assert_refused(node, status, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)


def test_a_data_set_whose_instance_uid_differs_from_the_request_contradicts_its_file_meta(
    node: NodeUnderTest,
) -> None:
    ds = ct()
    status = store(node, encode(ds, ExplicitVRLittleEndian), ds, request_instance="1.2.3.4")
    assert_refused(node, status, StoreStatus.META_CONTRADICTS_DATASET)


def test_an_implicit_vr_body_on_an_explicit_vr_context_contradicts_its_transfer_syntax(
    node: NodeUnderTest,
) -> None:
    ds = ct()
    status = store(node, encode(ds, ImplicitVRLittleEndian), ds)
    assert_refused(node, status, StoreStatus.META_CONTRADICTS_DATASET)
    assert any("implicit VR" in reason for reason in reasons(node))


def test_file_meta_elements_inside_the_data_set_are_refused(node: NodeUnderTest) -> None:
    ds = ct()
    big_endian = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", 20) + b"1.2.840.10008.1.2.2\x00"
    status = store(node, big_endian + encode(ds, ExplicitVRLittleEndian), ds)
    assert_refused(node, status, StoreStatus.META_CONTRADICTS_DATASET)


def test_a_valid_instance_is_still_stored_byte_exact(node: NodeUnderTest) -> None:
    ds = ct()
    payload = encode(ds, ExplicitVRLittleEndian)
    assert store(node, payload, ds) == StoreStatus.SUCCESS
    row = node.db.query_one("SELECT path FROM instances")
    assert row is not None
    raw = Path(row["path"]).read_bytes()
    assert raw.endswith(payload)
    assert pydicom.dcmread(row["path"]).SOPInstanceUID == ds.SOPInstanceUID
    assert reasons(node) == []
