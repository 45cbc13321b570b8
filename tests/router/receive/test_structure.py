"""The structure walk: what pydicom would read leniently (or recurse on) is refused first,
with a reason naming no value; what passes, it reads in every transfer syntax."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from router.receive.ingest import HEADER_TAGS, Origin
from router.receive.status import IngestError, StoreStatus
from router.receive.structure import Structure, read_structure
from router.store.database import SqliteDatabase
from testing.dicom_node import make_ingestor
from testing.dicom_tools import make_ct_slices


def part10(body: bytes, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``body`` behind a preamble and the file meta of a CT instance in ``transfer_syntax``."""
    ds = make_ct_slices(1, rows=4, cols=4)[0]
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + body


def walk(tmp_path: Path, data: bytes, max_depth: int = 32) -> Structure:
    path = tmp_path / "instance.dcm"
    path.write_bytes(data)
    return read_structure(
        path,
        wanted=HEADER_TAGS,
        max_depth=max_depth,
        max_inflated_bytes=2**26,
        scratch_dir=tmp_path,
    )


def nested(depth: int, defined: bool) -> bytes:
    """A ContentSequence (0040,A730) nested ``depth`` levels, explicit VR little endian
    (built in linear time: a level's bytes are its header, the levels inside, its end)."""
    sequence = struct.pack("<HH2sH", 0x0040, 0xA730, b"SQ", 0)
    if not defined:
        opening = (
            sequence
            + struct.pack("<L", 0xFFFFFFFF)
            + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        )
        closing = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
        return opening * depth + closing * depth
    parts = []
    for level in range(depth, 0, -1):  # the outermost first; a level holds level - 1 inside
        inside = 20 * (level - 1)
        parts.append(sequence + struct.pack("<L", 8 + inside))
        parts.append(struct.pack("<HHL", 0xFFFE, 0xE000, inside))
    return b"".join(parts)


@pytest.mark.parametrize("defined", [True, False])
def test_a_hundred_thousand_nested_sequences_are_refused_quickly_without_recursion(
    tmp_path: Path, defined: bool
) -> None:
    started = time.monotonic()
    with pytest.raises(IngestError) as raised:
        walk(tmp_path, part10(nested(100_000, defined)))
    assert raised.value.status is StoreStatus.SEQUENCE_TOO_DEEP
    assert time.monotonic() - started < 5


def test_nesting_up_to_the_limit_is_walked(tmp_path: Path) -> None:
    assert walk(tmp_path, part10(nested(32, False))).depth == 32


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 200) + b"CT", "runs past the end"),
        (struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF), "before a sequence"),
        (struct.pack("<HHL", 0xFFFE, 0xE00D, 0), "item delimiter outside"),
        (struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 2) + b"CT" + b"\x00\x01", "element header"),
        (struct.pack("<HH2sHL", 0x0008, 0x0060, b"UT", 0, 0xFFFFFFFF), "undefined length"),
    ],
)
def test_broken_structure_is_cannot_understand_with_a_reason(
    tmp_path: Path, body: bytes, fragment: str
) -> None:
    with pytest.raises(IngestError) as raised:
        walk(tmp_path, part10(body))
    assert raised.value.status is StoreStatus.CANNOT_UNDERSTAND
    assert fragment in raised.value.reason


def test_a_deflate_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    element = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 2**27) + b"\x00" * 2**27
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(element) + compressor.flush()
    with pytest.raises(IngestError) as raised:
        walk(tmp_path, part10(body, DeflatedExplicitVRLittleEndian))
    assert raised.value.status is StoreStatus.INSTANCE_TOO_LARGE
    assert [p.name for p in tmp_path.iterdir()] == ["instance.dcm"], "no scratch file left"


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR little endian
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",  # deflated
        "emri_small_jpeg_2k_lossless.dcm",  # encapsulated, multi-frame
        "SC_rgb_rle.dcm",
        "explicit_VR-UN.dcm",  # every element sent as UN
    ],
)
def test_real_files_in_every_encoding_are_walked_and_ingested(tmp_path: Path, name: str) -> None:
    path = Path(str(get_testdata_file(name)))
    structure = walk(tmp_path, path.read_bytes())
    assert structure.pixel_data is not None
    ingestor = make_ingestor(SqliteDatabase(tmp_path / "db.sqlite3"), tmp_path)
    outcome = ingestor.ingest(path.read_bytes(), Origin(None, "", ""), None)
    assert outcome.path.read_bytes() == path.read_bytes()


def test_a_spool_file_that_fails_the_checks_is_quarantined_at_recovery_not_a_crash(
    tmp_path: Path,
) -> None:
    """Before the checks, the node accepted such files; a restart must not fail on them."""
    ingestor = make_ingestor(SqliteDatabase(tmp_path / "db.sqlite3"), tmp_path)
    ds = make_ct_slices(1, rows=16, cols=16)[0]
    ds.PixelData = ds.PixelData[:10]
    folder = tmp_path / "spool" / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
    folder.mkdir(parents=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    good = make_ct_slices(1, rows=16, cols=16)[0]
    good_folder = tmp_path / "spool" / str(good.StudyInstanceUID) / str(good.SeriesInstanceUID)
    good_folder.mkdir(parents=True)
    good_path = good_folder / f"{good.SOPInstanceUID}.dcm"
    good.save_as(good_path, enforce_file_format=True)
    assert ingestor.recover_file(path) is False
    assert not path.exists()
    assert len(list((tmp_path / "quarantine").glob("*.bin"))) == 1
    assert ingestor.recover_file(good_path) is True
    assert ingestor.db.query_one("SELECT path FROM instances")["path"] == str(good_path)  # type: ignore[index]


def test_implicit_vr_body_under_explicit_meta_is_named_as_such(tmp_path: Path) -> None:
    ds = make_ct_slices(1, rows=4, cols=4)[0]
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    body = raw[144 + int.from_bytes(raw[140:144], "little") :]
    with pytest.raises(IngestError) as raised:
        walk(tmp_path, part10(body, ExplicitVRLittleEndian))
    assert raised.value.status is StoreStatus.META_CONTRADICTS_DATASET
