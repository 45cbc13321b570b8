"""Synthetic CT series: valid DICOM (dciodvfy-clean) that loads back to the same volume."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from router.run.series_loader import load_series
from testing.synthetic_dicom import (
    MANUFACTURER,
    PatientStudy,
    ct_series_datasets,
    new_patient_study,
    write_ct_series,
)

SPACING = (2.5, 0.75, 0.7)


def _volume(shape: tuple[int, int, int] = (20, 64, 64), low: int = -1024) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(42)
    return rng.integers(low, 3000, size=shape).astype(np.int16)


def _dciodvfy_errors(path: Path) -> list[str]:
    completed = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    output = completed.stdout + completed.stderr
    return [line for line in output.splitlines() if line.startswith("Error")]


@pytest.fixture
def study() -> PatientStudy:
    return new_patient_study(seed=7)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools dciodvfy not installed")
@pytest.mark.parametrize("low", [-1024, -3000], ids=["unsigned-stored", "signed-stored"])
def test_every_written_file_passes_dciodvfy_without_errors(
    tmp_path: Path, study: PatientStudy, low: int
) -> None:
    paths = write_ct_series(_volume(low=low), SPACING, study, tmp_path)
    assert len(paths) == 20
    for path in paths:
        assert _dciodvfy_errors(path) == [], path.name


def test_round_trip_gives_back_exact_hu_spacing_and_first_position(
    tmp_path: Path, study: PatientStudy
) -> None:
    hu = _volume()
    paths = write_ct_series(hu, SPACING, study, tmp_path, origin_lps=(-10.0, 20.5, -300.25))
    loaded = load_series(paths)
    np.testing.assert_array_equal(loaded.series.array, hu.astype(np.float32))
    assert loaded.series.array.dtype == np.float32
    np.testing.assert_allclose(loaded.series.geometry.spacing_mm, SPACING, atol=1e-6)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    np.testing.assert_allclose(
        loaded.series.geometry.to_lps((0, 0, 0)),
        [float(v) for v in first.ImagePositionPatient],
        atol=1e-6,
    )
    np.testing.assert_allclose(loaded.series.geometry.to_lps((0, 0, 0)), (-10.0, 20.5, -300.25))
    assert [s.sop_instance_uid for s in loaded.slices] == [
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths
    ]
    assert loaded.series.geometry.frame_of_reference_uid == str(first.FrameOfReferenceUID)


def test_hu_below_minus_1024_round_trip_through_signed_stored_values(
    tmp_path: Path, study: PatientStudy
) -> None:
    hu = _volume(shape=(3, 16, 16), low=-3000)
    hu[0, 0, 0] = np.iinfo(np.int16).min + 1024
    paths = write_ct_series(hu, SPACING, study, tmp_path)
    ds = pydicom.dcmread(paths[0])
    assert ds.PixelRepresentation == 1
    assert float(ds.RescaleIntercept) == -1024.0
    np.testing.assert_array_equal(load_series(paths).series.array, hu.astype(np.float32))


def test_full_int16_range_round_trips_with_intercept_zero(
    tmp_path: Path, study: PatientStudy
) -> None:
    hu = np.array([[[np.iinfo(np.int16).min, np.iinfo(np.int16).max]]], dtype=np.int16)
    paths = write_ct_series(hu, SPACING, study, tmp_path)
    assert float(pydicom.dcmread(paths[0]).RescaleIntercept) == 0.0
    np.testing.assert_array_equal(load_series(paths).series.array, hu.astype(np.float32))


def test_series_attributes_are_consistent_across_slices(study: PatientStudy) -> None:
    datasets = list(ct_series_datasets(_volume((5, 8, 8)), SPACING, study, series_number=4))
    assert [int(ds.InstanceNumber) for ds in datasets] == [1, 2, 3, 4, 5]
    for attribute in ("SeriesInstanceUID", "FrameOfReferenceUID", "StudyInstanceUID"):
        assert len({str(ds[attribute].value) for ds in datasets}) == 1
    assert len({str(ds.SOPInstanceUID) for ds in datasets}) == 5
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert np.allclose(np.diff(z), SPACING[0])
    ds = datasets[0]
    assert ds.StudyInstanceUID == study.study_instance_uid
    assert ds.PatientID == study.patient_id
    assert ds.ImagesInAcquisition == 5
    assert ds.Manufacturer == MANUFACTURER
    assert ds.SeriesNumber == 4
    assert [float(v) for v in ds.PixelSpacing] == [SPACING[1], SPACING[2]]
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_datasets_of_a_series_share_no_mutable_values(study: PatientStudy) -> None:
    first, second = ct_series_datasets(_volume((2, 4, 4)), SPACING, study)
    first.ImageType[0] = "DERIVED"
    first.WindowCenter[0] = 0
    first.PatientName = "CHANGED^ONLY^HERE"
    assert list(second.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert float(second.WindowCenter[0]) == -600.0
    assert str(second.PatientName) == study.patient_name


def test_slice_thickness_defaults_to_slice_spacing_and_can_be_set(study: PatientStudy) -> None:
    hu = _volume((1, 4, 4))
    assert float(next(ct_series_datasets(hu, SPACING, study)).SliceThickness) == SPACING[0]
    dataset = next(ct_series_datasets(hu, SPACING, study, slice_thickness_mm=1.25))
    assert float(dataset.SliceThickness) == 1.25


def test_new_patient_study_is_reproducible_for_a_seed_and_obviously_synthetic() -> None:
    first = new_patient_study(seed=11)
    again = new_patient_study(seed=11)
    other = new_patient_study(seed=12)
    assert first.patient_id == again.patient_id
    assert first.study_instance_uid == again.study_instance_uid
    assert first.study_instance_uid != other.study_instance_uid
    assert first.patient_name.startswith("SYNTHETIC^")
    assert first.study_instance_uid.startswith("2.25.")
    assert len(first.study_instance_uid) <= 64
    assert new_patient_study().study_instance_uid != new_patient_study().study_instance_uid


@pytest.mark.parametrize(
    ("hu", "message"),
    [
        (np.zeros((4, 4), dtype=np.int16), "3-D"),
        (np.zeros((1, 4, 4), dtype=np.float32), "int16"),
        (np.zeros((0, 4, 4), dtype=np.int16), "at least one"),
    ],
)
def test_writer_refuses_arrays_that_are_not_3d_int16(
    study: PatientStudy, hu: npt.NDArray[np.generic], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        next(ct_series_datasets(hu, SPACING, study))  # type: ignore[arg-type]


def test_writer_refuses_non_positive_spacing(study: PatientStudy) -> None:
    with pytest.raises(ValueError, match="positive"):
        next(ct_series_datasets(_volume((1, 4, 4)), (0.0, 1.0, 1.0), study))
