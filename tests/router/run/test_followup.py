"""Follow-up through the router: the prior FLAIR is found (held, or pulled from a real Orthanc
by C-FIND/C-MOVE), compared by ms_lesion, and referenced in the SR with tracking UIDs reused."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from algorithms import codes
from algorithms.contract import Verdict
from dicom_sr.read import ReportSummary, read_measurement_report
from router.service import wait_for
from testing.dicom_tools import run_dciodvfy
from testing.mr_dicom import write_mr_series
from testing.orthanc import Orthanc
from testing.router_process import RouterUnderTest, StartRouter
from testing.storescp import DCMTK_ENV, complete_objects, running_storescp
from testing.synthetic_dicom import PatientStudy, new_patient_study
from training.ms_lesion import synth

pytestmark = pytest.mark.slow

SEED = 4242
PROTOCOL = synth.Protocol(
    mode="2d",
    pixel_mm=1.0,
    slice_spacing_mm=5.0,
    slice_thickness_mm=5.0,
    rows=220,
    columns=184,
    slices=29,
    orientation="axial",
    centre_head_mm=(0.0, 0.0, 8.0),
)
POSE = synth.HeadPose((3.0, -2.0, 4.0), (2.0, -5.0, 3.0))
MOVED = synth.HeadPose((-3.0, 2.0, 5.0), (4.0, 6.0, -5.0))


def _lesion(
    phantom: synth.BrainPhantom, kind: synth.LesionKind, draw: int, size: float
) -> synth.LesionSpec:
    rng = np.random.default_rng([SEED, draw])
    return phantom.lesion_near(phantom.point_of_kind(kind, draw), kind, rng, long_semi_axis_mm=size)


def exams() -> tuple[synth.SyntheticFlair, synth.SyntheticFlair]:
    """A prior with two lesions and a follow-up where one grew and one is new."""
    phantom = synth.BrainPhantom(SEED)
    stable = _lesion(phantom, "periventricular", 1, 5.0)
    growing = _lesion(phantom, "juxtacortical", 2, 4.0)
    new = _lesion(phantom, "juxtacortical", 11, 4.5)
    prior = synth.acquire(
        phantom, [stable, growing], PROTOCOL, POSE, np.random.default_rng(10), numbers=[1, 2]
    )
    current = synth.acquire(
        phantom,
        [stable, growing.scaled(1.6), new],
        PROTOCOL,
        MOVED,
        np.random.default_rng(11),
        numbers=[1, 2, 3],
    )
    return prior, current


def studies() -> tuple[PatientStudy, PatientStudy]:
    current = new_patient_study(SEED)
    prior = dataclasses.replace(
        new_patient_study(SEED + 1),
        patient_id=current.patient_id,
        patient_name=current.patient_name,
        study_date="20230115",
    )
    return prior, current


def yaml(destination_port: int, orthanc: Orthanc | None = None) -> str:
    sources = (
        f"      sources: [{{ae_title: {orthanc.ae_title}, host: 127.0.0.1, port: {orthanc.dicom_port}}}]\n"
        if orthanc is not None
        else ""
    )
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"destinations:\n  pacs: {{ae_title: STORESCP, host: 127.0.0.1, port: {destination_port}, timeout_s: 10}}\n"
        "completion: {settle_after_release_s: 0.3, series_idle_s: 5, study_idle_s: 20, hard_cap_s: 300}\n"
        "algorithms:\n"
        "  ms_lesion:\n"
        "    priors:\n"
        "      max_age_days: 36500\n"
        f"{sources}"
        "rules:\n"
        "  - name: brain-flair-ms\n"
        "    when: {Modality: MR, SeriesDescription: {regex: '(?i)flair'}}\n"
        "    run: ms_lesion\n"
        "    send_to: [pacs]\n"
    )


def send(router: RouterUnderTest, paths: list[Path]) -> None:
    subprocess.run(
        [
            "/usr/bin/storescu",
            "-aet",
            "PACS",
            "-aec",
            "RADROUTER",
            "127.0.0.1",
            str(router.dicom_port),
        ]
        + [str(p) for p in paths],
        check=True,
        capture_output=True,
        env=DCMTK_ENV,
        timeout=60,
    )


def sr_of(received: Path, study_uid: str) -> tuple[Path, ReportSummary] | None:
    for path, ds in complete_objects(received):
        if ds.Modality == "SR" and str(ds.StudyInstanceUID) == study_uid:
            return path, read_measurement_report(ds)
    return None


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    with running_storescp(tmp_path / "pacs") as receiving:
        yield receiving.port, receiving.folder


def test_a_follow_up_reuses_the_prior_results_tracking_uids_and_references_the_prior(
    start_router: StartRouter, tmp_path: Path, pacs: tuple[int, Path]
) -> None:
    port, received = pacs
    prior_exam, current_exam = exams()
    prior_study, current_study = studies()
    router = start_router(yaml(port))
    prior_paths = write_mr_series(prior_exam.image, prior_exam.affine, prior_study, tmp_path / "p")
    send(router, prior_paths)
    assert wait_for(lambda: sr_of(received, prior_study.study_instance_uid) is not None, 240, 0.5)
    found = sr_of(received, prior_study.study_instance_uid)
    assert found is not None
    prior_report = found[1]
    assert prior_report.verdict is Verdict.PRESENT

    current_paths = write_mr_series(
        current_exam.image, current_exam.affine, current_study, tmp_path / "c"
    )
    send(router, current_paths)
    assert wait_for(lambda: sr_of(received, current_study.study_instance_uid) is not None, 240, 0.5)
    found = sr_of(received, current_study.study_instance_uid)
    assert found is not None
    path, report = found
    assert run_dciodvfy(path).errors == []
    assert report.verdict is Verdict.PRESENT, report.reason
    assert {r.study_instance_uid for r in report.prior_evidence} == {prior_study.study_instance_uid}
    prior_sops = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in prior_paths
    }
    assert {r.sop_instance_uid for r in report.prior_evidence} <= prior_sops
    changes = {q.value.meaning for f in report.findings for q in f.qualifiers}
    assert "New" in changes
    carried = {f.tracking_id: f.tracking_uid for f in prior_report.findings}
    reused = [f for f in report.findings if f.tracking_id in carried]
    assert reused, "no lesion kept its tracking identifier"
    assert all(f.tracking_uid == carried[f.tracking_id] for f in reused)
    study_level = {m.name.value: m.value for m in report.measurements}
    assert study_level[codes.NUMBER_OF_NEW_LESIONS.value] >= 1


def test_a_prior_held_only_by_the_pacs_is_pulled_by_c_move_and_not_routed_itself(
    start_router: StartRouter, tmp_path: Path, pacs: tuple[int, Path], orthanc: Orthanc
) -> None:
    port, received = pacs
    prior_exam, current_exam = exams()
    prior_study, current_study = studies()
    prior_study = dataclasses.replace(
        prior_study, study_instance_uid=new_patient_study(SEED + 7).study_instance_uid
    )
    current_study = dataclasses.replace(
        current_study, study_instance_uid=new_patient_study(SEED + 8).study_instance_uid
    )
    for p in write_mr_series(prior_exam.image, prior_exam.affine, prior_study, tmp_path / "p"):
        orthanc.upload(p)
    router = start_router(yaml(port, orthanc))
    # One entry per AE title: Orthanc moves to the first modality with the title, so an
    # entry left by another test (another port) must be replaced, not added beside.
    orthanc.add_modality("radrouter", "RADROUTER", router.dicom_port)

    current_paths = write_mr_series(
        current_exam.image, current_exam.affine, current_study, tmp_path / "c"
    )
    send(router, current_paths)
    assert wait_for(lambda: sr_of(received, current_study.study_instance_uid) is not None, 300, 0.5)
    found = sr_of(received, current_study.study_instance_uid)
    assert found is not None
    _, report = found
    assert {r.study_instance_uid for r in report.prior_evidence} == {prior_study.study_instance_uid}
    assert "New" in {q.value.meaning for f in report.findings for q in f.qualifiers}
    db = router.service.db
    prior_row = db.query_one(
        "SELECT state FROM studies WHERE study_uid = ?", (prior_study.study_instance_uid,)
    )
    assert prior_row is not None and prior_row["state"] == "prior"
    assert (
        db.query("SELECT id FROM jobs WHERE study_uid = ?", (prior_study.study_instance_uid,)) == []
    )
    assert sr_of(received, prior_study.study_instance_uid) is None
