"""Header values that are merely non-conformant never fail a job, and no header value reaches
a log line, an error column, the API or ``radrouter status``."""

from __future__ import annotations

import io
import logging
import re
import stat
import struct
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from algorithms.contract import AlgorithmResult, Verdict
from algorithms.registry import Registry
from dicom_sr.context import ResultVersion, SourceImage, StudyContext
from dicom_sr.result_objects import build_result_objects
from router.admin import DatabaseSource, format_status, read_status
from router.run.series_loader import load_series, read_source_header
from testing.dicom_tools import make_ct_slices
from testing.plugins import AlwaysNegative
from testing.router_process import StartRouter, api_get, storescu

BIRTH_DATE = "02.01.1960"
BIRTH_YEAR = re.compile(r"(?<![\d.])1960(?:\d{4})?(?!\d)")
"""The year on its own or as a date ("1960", "1960-01-02", "19600102"), not digits inside a
UID or a number ("2.25.8819601...", "0.1960"), which are random and contain it by chance."""
NON_CONFORMANT = {
    "PatientBirthDate": BIRTH_DATE,
    "PatientSex": "male",
    "StudyDate": "2024-01-15",
    "StudyTime": "10:15 h",
    "PatientAge": "45 years",
}


def write_series(folder: Path, values: dict[str, str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in make_ct_slices(4):
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def with_unknown_vr(path: Path, tag: int) -> None:
    """Give top-level ``tag`` of an explicit VR little endian file the VR code ``ZZ``."""
    raw = path.read_bytes()
    at = raw.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF), 132)
    path.write_bytes(raw[: at + 4] + b"ZZ" + raw[at + 6 :])


def build_results(first_header: Dataset, loaded_slices: list[SourceImage]) -> None:
    build_result_objects(
        result=AlgorithmResult(Verdict.ABSENT, reason="test"),
        info=AlwaysNegative.info,
        source_images=loaded_slices,
        study=StudyContext(first_header),
        version=ResultVersion(1),
    )


def test_non_conformant_dates_sex_age_and_an_unknown_vr_load_and_make_result_objects(
    tmp_path: Path,
) -> None:
    paths = write_series(tmp_path, NON_CONFORMANT)
    for path in paths:
        with_unknown_vr(path, 0x00080050)  # AccessionNumber
    loaded = load_series(paths)
    header = loaded.first_header
    for keyword in NON_CONFORMANT:
        assert not header.get(keyword), f"{keyword} is emptied"
    assert "AccessionNumber" not in header, "a value that cannot be decoded is left out"
    assert header.PatientID == "PAT0001", "conformant values are kept"
    slices = [SourceImage(s.sop_class_uid, s.sop_instance_uid) for s in loaded.slices]
    build_results(header, slices)
    build_results(read_source_header(paths[0]), slices[:1])  # the "not assessed" path


def test_a_valid_ct_with_a_non_conformant_birth_date_runs_and_the_date_shows_nowhere(
    start_router: StartRouter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    router = start_router(
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, "
        "hard_cap_s: 60}\n"
        "jobs: {retry: {max_attempts: 1, backoff_initial_s: 0.1}}\n"
        "rules:\n  - name: ct\n    when: {Modality: CT}\n    run: always_negative\n",
        registry=Registry({"always_negative": AlwaysNegative}),
    )
    paths = write_series(tmp_path / "in", {"PatientBirthDate": BIRTH_DATE})
    study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(router, paths)
    db = router.service.db
    deadline = time.monotonic() + 60
    job = None
    while time.monotonic() < deadline:
        job = db.query_one("SELECT * FROM jobs WHERE study_uid = ?", (study_uid,))
        if job is not None and job["state"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert job is not None and job["state"] == "done", dict(job) if job else None
    assert job["verdict"] == Verdict.ABSENT.value

    result = db.query_one("SELECT path FROM results WHERE study_uid = ?", (study_uid,))
    assert result is not None
    report = pydicom.dcmread(result["path"])
    assert not report.get("PatientBirthDate"), "the SR carries no non-conformant date"
    assert report.PatientID == "PAT0001"
    assert stat.S_IMODE(Path(result["path"]).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(result["path"]).parent.stat().st_mode) == 0o700

    shown = [
        caplog.text,
        str(job["error"]),
        str(api_get(router, "/jobs")),
        str(api_get(router, f"/studies/{study_uid}")),
        format_status(read_status(DatabaseSource(db), 20)),
        str([tuple(row) for row in db.query("SELECT * FROM events")]),
    ]
    for where in shown:
        assert BIRTH_DATE not in where and not BIRTH_YEAR.search(where)


def test_the_tolerant_header_of_the_not_assessed_path_reads_a_series_that_is_no_volume(
    tmp_path: Path,
) -> None:
    ds = make_ct_slices(1)[0]
    ds.PatientBirthDate = BIRTH_DATE
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path = tmp_path / "no-pixels.dcm"
    path.write_bytes(buffer.getvalue())
    header = read_source_header(path)
    assert not header.get("PatientBirthDate")
    assert header.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
