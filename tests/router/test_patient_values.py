"""Blanking a study's identifying values in text radrouter did not write (a plugin's
exception, a library's message), read from the study's own header."""

from __future__ import annotations

from pathlib import Path

import pydicom

from router.patient_values import REDACTED, PatientValues
from testing.dicom_tools import make_ct_slices


def _written(tmp_path: Path) -> Path:
    ds = make_ct_slices(1)[0]
    ds.PatientName = "Quillfeather^Ottoline^Mo"
    ds.PatientID = "MRN-0042"
    ds.AccessionNumber = "ACC77"
    with pydicom.config.disable_value_validation():  # a non-conformant date, as sent
        ds.PatientBirthDate = "02.01.1960"
    path = tmp_path / "one.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_every_identifying_value_and_its_longer_parts_are_blanked(tmp_path: Path) -> None:
    values = PatientValues.of_file(_written(tmp_path))
    text = (
        "ValueError: birth date '02.01.1960' of QUILLFEATHER^Ottoline^Mo (MRN-0042, ACC77); "
        "Ottoline again; Mo stays, MR stays"
    )
    redacted = values.redact(text)
    for secret in ("02.01.1960", "uillfeather", "Ottoline", "MRN-0042", "ACC77"):
        assert secret.lower() not in redacted.lower(), redacted
    assert redacted.count(REDACTED) == 5  # the whole name once, then a part of it
    assert "Mo stays, MR stays" in redacted, "parts shorter than 3 characters are left"


def test_no_file_or_no_values_leave_text_as_it_is(tmp_path: Path) -> None:
    missing = PatientValues.of_file(tmp_path / "gone.dcm")
    assert missing.redact("anything 02.01.1960") == "anything 02.01.1960"
    assert PatientValues(()).redact("x") == "x"
