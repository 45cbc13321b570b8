"""Part-10 encoding: little endian files, written atomically."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

from algorithms.contract import AlgorithmResult
from dicom_sr.io import to_bytes, write_dataset
from tests.dicom_sr.support import BuildReport


def test_write_dataset_writes_a_part10_little_endian_file(
    absent_result: AlgorithmResult, build_report: BuildReport, tmp_path: Path
) -> None:
    sr = build_report(absent_result)

    path = write_dataset(sr, tmp_path / "sr.dcm")

    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    assert back.SOPInstanceUID == sr.SOPInstanceUID


def test_to_bytes_gives_the_bytes_write_dataset_writes(
    absent_result: AlgorithmResult, build_report: BuildReport, tmp_path: Path
) -> None:
    sr = build_report(absent_result)

    assert to_bytes(sr) == write_dataset(sr, tmp_path / "sr.dcm").read_bytes()


def test_write_dataset_replaces_an_existing_file_and_leaves_no_temporary(
    absent_result: AlgorithmResult, build_report: BuildReport, tmp_path: Path
) -> None:
    path = tmp_path / "sr.dcm"
    path.write_bytes(b"old")

    write_dataset(build_report(absent_result), path)

    assert pydicom.dcmread(path).Modality == "SR"
    assert [p.name for p in tmp_path.iterdir()] == ["sr.dcm"]


def test_write_dataset_refuses_big_endian(
    absent_result: AlgorithmResult, build_report: BuildReport, tmp_path: Path
) -> None:
    sr = build_report(absent_result)
    sr.file_meta.TransferSyntaxUID = ExplicitVRBigEndian

    with pytest.raises(
        ValueError, match="TransferSyntaxUID must be Explicit or Implicit VR Little"
    ):
        write_dataset(sr, tmp_path / "sr.dcm")
    assert not (tmp_path / "sr.dcm").exists()
