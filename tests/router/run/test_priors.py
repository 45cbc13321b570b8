"""Finding a patient's prior exam: selection rules, studies already held, a real Orthanc queried
with C-FIND and retrieved with C-MOVE, and the findings of radrouter's earlier result."""

from __future__ import annotations

import hashlib
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from algorithms import codes
from algorithms.contract import AlgorithmResult, Finding, ImageRegion, Measurement, Verdict
from algorithms.ms_lesion.plugin import MSLesionSegmenter
from config.schema import PriorsConfig, PriorSource
from dicom_sr.context import ResultVersion, SourceImage, StudyContext
from dicom_sr.io import write_dataset
from dicom_sr.tid1500 import build_measurement_report
from router.run.priors.finder import find_prior
from router.run.priors.loading import load_prior_study, prior_findings
from router.run.priors.local_index import find_local_prior
from router.run.priors.selection import CurrentStudy, PriorCandidate, select_priors
from router.run.series_loader import load_series
from router.store.database import SqliteDatabase
from testing.mr_dicom import T1_SEQUENCE, write_mr_series
from testing.orthanc import Orthanc
from testing.router_process import RouterUnderTest, StartRouter
from testing.storescp import DCMTK_ENV
from testing.synthetic_dicom import PatientStudy

ROUTER_YAML = (
    "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
    "http: {host: 127.0.0.1, port: 0}\n"
    "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, hard_cap_s: 60}\n"
)
FLAIR_SELECTOR = {"Modality": "MR", "SeriesDescription": {"regex": "(?i)flair"}}
AXIAL = np.array(
    [[0.0, 0.0, 1.0, -16.0], [0.0, 1.0, 0.0, -16.0], [5.0, 0.0, 0.0, -30.0], [0, 0, 0, 1.0]]
)


def _config(**extra: object) -> PriorsConfig:
    return PriorsConfig.model_validate({"series_selector": FLAIR_SELECTOR, **extra})


FLAIR_SELECTOR_RULE = _config().series_selector or {}


def _study(patient: str, date: str, time_: str = "101500") -> PatientStudy:
    return PatientStudy(
        patient_id=patient,
        patient_name=f"SYNTHETIC^{patient}",
        study_instance_uid=generate_uid(prefix=None),
        accession_number=f"ACC{uuid.uuid4().int % 10**8:08d}",
        study_date=date,
        study_time=time_,
    )


def _write(
    study: PatientStudy, folder: Path, *, flair: bool = True, t1: bool = False
) -> dict[str, list[Path]]:
    image = (np.arange(12 * 32 * 32, dtype=np.uint16).reshape(12, 32, 32) % 977) + 1
    out: dict[str, list[Path]] = {}
    if flair:
        out["flair"] = write_mr_series(image, AXIAL, study, folder / "flair", series_number=3)
    if t1:
        out["t1"] = write_mr_series(
            image,
            AXIAL,
            study,
            folder / "t1",
            series_description="SAG T1 MPRAGE",
            series_number=2,
            sequence=T1_SEQUENCE,
            acquisition_type="3D",
        )
    return out


def _storescu(router: RouterUnderTest, paths: list[Path]) -> None:
    subprocess.run(
        [
            "/usr/bin/storescu",
            "-aet",
            "PACS",
            "-aec",
            "RADROUTER",
            "127.0.0.1",
            str(router.dicom_port),
            *map(str, paths),
        ],
        check=True,
        capture_output=True,
        env=DCMTK_ENV,
        timeout=60,
    )


def _series_uid(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


# --- selection rules ---------------------------------------------------------------------------


def test_select_priors_orders_earlier_studies_most_recent_first_and_skips_the_current_one() -> None:
    current = CurrentStudy("P1", "20240610", "1.2.3", "101500")
    candidates = [
        PriorCandidate("1.2.3", "20240610", "101500"),  # the study itself
        PriorCandidate("1.2.4", "20230101", "090000"),
        PriorCandidate("1.2.5", "20240101", "090000"),
        PriorCandidate("1.2.6", "20240701", "090000"),  # later
        PriorCandidate("1.2.7", "20240610", "080000"),  # same day, earlier
        PriorCandidate("1.2.8", "20240610", "120000"),  # same day, later
        PriorCandidate("1.2.9", "", ""),  # no date
    ]
    chosen = select_priors(current, candidates, max_age_days=3650)
    assert [c.study_instance_uid for c in chosen] == ["1.2.7", "1.2.5", "1.2.4"]


def test_select_priors_respects_the_age_limit_and_needs_a_current_date() -> None:
    old = PriorCandidate("1.2.4", "20200101")
    recent = PriorCandidate("1.2.5", "20240301")
    current = CurrentStudy("P1", "20240610", "1.2.3")
    assert select_priors(current, [old, recent], max_age_days=365) == [recent]
    assert select_priors(CurrentStudy("P1", "", "1.2.3"), [old, recent], 3650) == []


def test_same_day_study_without_times_is_not_called_earlier() -> None:
    current = CurrentStudy("P1", "20240610", "1.2.3", "")
    assert select_priors(current, [PriorCandidate("1.2.4", "20240610", "080000")], 30) == []


# --- studies already held ----------------------------------------------------------------------


def test_local_prior_is_the_most_recent_earlier_flair_of_the_same_patient(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(ROUTER_YAML)
    older = _study("SYN-A", "20220301")
    newer_without_flair = _study("SYN-A", "20230301")
    other_patient = _study("SYN-B", "20231201")
    current = _study("SYN-A", "20240610")
    written = {
        "older": _write(older, tmp_path / "older", t1=True),
        "newer": _write(newer_without_flair, tmp_path / "newer", flair=False, t1=True),
        "other": _write(other_patient, tmp_path / "other"),
        "current": _write(current, tmp_path / "current"),
    }
    for series in written.values():
        for paths in series.values():
            _storescu(router, paths)
    db = router.service.db
    now = CurrentStudy("SYN-A", current.study_date, current.study_instance_uid, current.study_time)

    keys = router.service.priors.keys
    found = find_local_prior(db, keys, now, FLAIR_SELECTOR_RULE, max_age_days=3650)

    assert found is not None and found.source == "local"
    assert found.study_instance_uid == older.study_instance_uid
    assert found.series_instance_uid == _series_uid(written["older"]["flair"])
    assert len(found.paths) == 12 and found.study_date == "20220301"
    # No PatientID in the index, nor its plain hash: the keyed pseudonym only.
    assert not db.query("SELECT 1 FROM prior_index WHERE patient_key LIKE '%SYN%'")
    plain = hashlib.sha256(b"radrouter-patient:SYN-A").hexdigest()
    assert not db.query("SELECT 1 FROM prior_index WHERE patient_key = ?", (plain,))
    assert db.query("SELECT 1 FROM prior_index WHERE patient_key = ?", (keys.key("SYN-A"),))
    # Too old for a one-year limit: nothing.
    assert find_local_prior(db, keys, now, FLAIR_SELECTOR_RULE, max_age_days=365) is None


# --- a PACS: C-FIND and C-MOVE -----------------------------------------------------------------


def test_prior_is_retrieved_from_the_pacs_with_c_find_and_c_move(
    orthanc: Orthanc, start_router: StartRouter, tmp_path: Path
) -> None:
    patient = f"SYN-{uuid.uuid4().hex[:8]}"
    prior = _study(patient, "20230115")
    later = _study(patient, "20250101")
    current = _study(patient, "20240610")
    prior_files = _write(prior, tmp_path / "prior", t1=True)
    for study, folder in ((later, "later"), (current, "current")):
        for paths in _write(study, tmp_path / folder).values():
            for path in paths:
                orthanc.upload(path)
    for paths in prior_files.values():
        for path in paths:
            orthanc.upload(path)
    router = start_router(ROUTER_YAML)
    orthanc.add_modality("radrouter", "RADROUTER", router.dicom_port)
    config = _config(
        sources=[{"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}]
    )
    db = router.service.db
    now = CurrentStudy(patient, current.study_date, current.study_instance_uid, current.study_time)

    started = time.monotonic()
    found = find_prior(db, router.service.priors.keys, config, "RADROUTER", now, {"Modality": "CT"})
    elapsed = time.monotonic() - started

    assert found is not None, "no prior retrieved"
    assert found.source == orthanc.ae_title
    assert found.study_instance_uid == prior.study_instance_uid
    assert found.series_instance_uid == _series_uid(prior_files["flair"])
    assert len(found.paths) == 12 and all(p.exists() for p in found.paths)
    # Only the FLAIR series was moved, into radrouter's own spool.
    held = db.query(
        "SELECT DISTINCT series_uid FROM instances WHERE study_uid = ?", (prior.study_instance_uid,)
    )
    assert [r["series_uid"] for r in held] == [found.series_instance_uid]
    loaded = load_prior_study(db, found, "ms_lesion")
    assert loaded.series.array.shape == (12, 32, 32) and loaded.study_date == "20230115"
    assert loaded.findings == ()
    assert elapsed < 60
    # Held now: a second search finds it locally without asking the PACS.
    again = find_prior(db, router.service.priors.keys, config, "RADROUTER", now, {"Modality": "CT"})
    assert again is not None and again.source == "local"


def test_unreachable_source_is_skipped_and_no_prior_is_found(
    start_router: StartRouter, tmp_path: Path
) -> None:
    router = start_router(ROUTER_YAML)
    config = _config(
        sources=[{"ae_title": "NOPACS", "host": "127.0.0.1", "port": 9, "timeout_s": 2}]
    )
    now = CurrentStudy("SYN-NONE", "20240610", generate_uid(prefix=None))
    assert (
        find_prior(router.service.db, router.service.priors.keys, config, "RADROUTER", now, {})
        is None
    )


def test_prior_source_config_rejects_bad_ae_titles() -> None:
    with pytest.raises(ValueError, match="ae_title"):
        PriorSource.model_validate({"ae_title": "A\\B", "host": "h", "port": 104})


# --- the findings of radrouter's earlier result ------------------------------------------------


def test_prior_findings_come_from_the_earlier_sr_with_centres_in_lps(tmp_path: Path) -> None:
    study = _study("SYN-C", "20230115")
    paths = _write(study, tmp_path / "prior")["flair"]
    loaded = load_series(paths)
    k, row, col = 5, 12.0, 10.0
    square = (
        (col - 2, row - 2),
        (col + 2, row - 2),
        (col + 2, row + 2),
        (col - 2, row + 2),
        (col - 2, row - 2),
    )
    finding = Finding(
        finding_type=codes.DEMYELINATION,
        probability=0.9,
        centre_voxel=(k, row, col),
        region=ImageRegion(slice_index=k, points=square),
        measurements=(Measurement(codes.VOLUME, 42.0, codes.CUBIC_MILLIMETRE),),
        finding_site=codes.CEREBRAL_WHITE_MATTER,
        tracking_id="Lesion 7",
    )
    result = AlgorithmResult(Verdict.PRESENT, findings=(finding,), reason="1 lesion")
    sr = build_measurement_report(
        result=result,
        info=MSLesionSegmenter.info,
        source_images=[
            SourceImage(s.sop_class_uid, s.sop_instance_uid, s.frame_number) for s in loaded.slices
        ],
        study=StudyContext(loaded.first_header),
        series_instance_uid=generate_uid(prefix=None),
        sop_instance_uid=generate_uid(prefix=None),
        series_number=9001,
        version=ResultVersion(number=1),
    )
    sr_path = tmp_path / "sr.dcm"
    write_dataset(sr, sr_path)
    db = SqliteDatabase(tmp_path / "db.sqlite3")
    with db.transaction() as conn:
        job_id = conn.execute(
            "INSERT INTO jobs (study_uid, series_uid, study_revision, algorithm, rule_name, priority, "
            "priority_rank, state, max_attempts, created_at) VALUES (?, ?, 1, 'ms_lesion', 'r', "
            "'routine', 2, 'done', 1, 0) RETURNING id",
            (study.study_instance_uid, loaded.series.series_instance_uid),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO results (job_id, study_uid, algorithm, algorithm_version, version_number, "
            "series_instance_uid, sop_instance_uid, sop_class_uid, path, verdict, finding_count, "
            "created_at) VALUES (?, ?, 'ms_lesion', '0.1.0', 1, ?, ?, ?, ?, 'present', 1, 0)",
            (
                job_id,
                study.study_instance_uid,
                str(sr.SeriesInstanceUID),
                str(sr.SOPInstanceUID),
                str(sr.SOPClassUID),
                str(sr_path),
            ),
        )

    (prior,) = prior_findings(db, study.study_instance_uid, "ms_lesion", loaded)

    expected = loaded.series.geometry.affine @ np.array([k, row, col, 1.0])
    assert prior.tracking_id == "Lesion 7" and prior.tracking_uid
    assert prior.centre_lps == pytest.approx(tuple(expected[:3]), abs=0.01)
    assert prior.volume_mm3 == pytest.approx(42.0)
    assert prior.finding_type.value == codes.DEMYELINATION.value
    assert prior_findings(db, study.study_instance_uid, "lung_nodule", loaded) == ()
