"""The shared test helpers: synthetic CT slices are valid, dciodvfy and PixelMed output is
parsed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import CTImageStorage

from testing.dicom_tools import (
    PIXELMED_JAR,
    make_ct_slices,
    run_dciodvfy,
    run_pixelmed_sr_validator,
)


def test_make_ct_slices_pass_dciodvfy_without_errors_or_warnings(tmp_path: Path) -> None:
    for index, ds in enumerate(make_ct_slices(2)):
        path = tmp_path / f"ct{index}.dcm"
        ds.save_as(path, enforce_file_format=True)

        report = run_dciodvfy(path)

        assert report.errors == [], report.output
        assert report.warnings == [], report.output


def test_make_ct_slices_are_one_series_with_consistent_geometry() -> None:
    slices = make_ct_slices(4, rows=32, cols=48, spacing=(2.0, 0.5, 0.7))

    assert len({ds.StudyInstanceUID for ds in slices}) == 1
    assert len({ds.SeriesInstanceUID for ds in slices}) == 1
    assert len({ds.FrameOfReferenceUID for ds in slices}) == 1
    assert len({ds.SOPInstanceUID for ds in slices}) == 4
    assert all(ds.SOPClassUID == CTImageStorage for ds in slices)
    z = [float(ds.ImagePositionPatient[2]) for ds in slices]
    assert np.allclose(np.diff(z), 2.0)
    assert [float(v) for v in slices[0].PixelSpacing] == [0.5, 0.7]
    assert [ds.InstanceNumber for ds in slices] == [1, 2, 3, 4]


def test_make_ct_slices_store_hounsfield_units_through_the_rescale() -> None:
    ds = make_ct_slices(1, rows=32, cols=32)[0]

    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)

    assert ds.pixel_array.dtype == np.int16
    assert ds.pixel_array.shape == (32, 32)
    assert hu[0, 0] == pytest.approx(-1000.0)
    assert hu.max() == pytest.approx(40.0)


def test_make_ct_slices_refuses_no_slices() -> None:
    with pytest.raises(ValueError, match="n must be >= 1"):
        make_ct_slices(0)


def test_run_dciodvfy_reports_the_errors_of_an_invalid_file(tmp_path: Path) -> None:
    ds = make_ct_slices(1)[0]
    del ds.Rows
    path = tmp_path / "broken.dcm"
    ds.save_as(path, enforce_file_format=True)

    report = run_dciodvfy(path)

    assert report.returncode != 0
    assert any("<Rows>" in error for error in report.errors), report.output


@pytest.mark.slow  # one JVM, about 6 s of CPU
@pytest.mark.skipif(not PIXELMED_JAR.is_file(), reason="PixelMed missing (libpixelmed-java)")
def test_run_pixelmed_sr_validator_does_not_pass_a_file_it_cannot_validate(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    make_ct_slices(1)[0].save_as(path, enforce_file_format=True)

    report = run_pixelmed_sr_validator(path)

    assert report.returncode == 0  # PixelMed exits 0 whatever it finds
    assert (report.iod, report.root_template) == (None, None), report.output
    assert "IOD (SOP Class) unrecognized" in report.output
    assert not report.validated


def test_run_pixelmed_sr_validator_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a file"):
        run_pixelmed_sr_validator(tmp_path / "missing.dcm")
