"""End to end with a real PACS: Orthanc pushes a chest CT, radrouter returns a TID 1500 SR."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

from algorithms.contract import Verdict
from dicom_sr.read import ReportSummary, read_measurement_report
from testing.dicom_tools import run_dciodvfy
from testing.orthanc import Orthanc
from testing.router_process import StartRouter, router_yaml
from testing.synthetic_dicom import new_patient_study, write_ct_series
from training.lung_nodule.synth import NoduleSpec, generate_chest_ct, right_lung_centre_mm

pytestmark = pytest.mark.slow

SHAPE = (90, 320, 320)
SPACING = (2.5, 0.85, 0.85)


def make_study(
    folder: Path, seed: int, nodule_mm: float | None
) -> tuple[list[Path], np.ndarray | None]:
    nodules = [NoduleSpec(right_lung_centre_mm(SHAPE, SPACING), nodule_mm)] if nodule_mm else []
    ct = generate_chest_ct(seed, shape=SHAPE, spacing_mm=SPACING, nodules=nodules)
    paths = write_ct_series(ct.hu, ct.spacing_mm, new_patient_study(seed), folder)
    truth = np.array(ct.nodules[0].centre_voxel) if ct.nodules else None
    return paths, truth


def upload(orthanc: Orthanc, paths: list[Path]) -> str:
    study_ids = {orthanc.upload(p) for p in paths}
    assert len(study_ids) == 1
    return study_ids.pop()


def wait_for_sr(
    orthanc: Orthanc, study_id: str, count: int = 1, timeout_s: float = 180
) -> list[bytes]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        ids = orthanc.modality_instances(study_id, "SR")
        if len(ids) >= count:
            return [orthanc.instance_file(i) for i in ids]
        time.sleep(0.25)
    raise AssertionError(f"no SR reached the PACS within {timeout_s} s")


def check_written_object(data: bytes, folder: Path) -> ReportSummary:
    path = folder / f"sr-{time.monotonic_ns()}.dcm"
    path.write_bytes(data)
    report = run_dciodvfy(path)
    assert report.errors == [], report.errors
    ds = pydicom.dcmread(path)
    assert "AI" in ds.SeriesDescription and "NOT VERIFIED" in ds.SeriesDescription.upper()
    return read_measurement_report(ds)


def test_pacs_pushes_chest_ct_and_gets_nodule_sr_back_in_the_same_study(
    orthanc: Orthanc, start_router: StartRouter, tmp_path: Path
) -> None:
    paths, truth = make_study(tmp_path / "ct", seed=101, nodule_mm=14.0)
    assert truth is not None
    study_id = upload(orthanc, paths)
    router = start_router(router_yaml(orthanc))
    orthanc.add_modality("radrouter", "RADROUTER", router.dicom_port)
    orthanc.push_to_modality("radrouter", [study_id])

    sr_bytes = wait_for_sr(orthanc, study_id)
    summary = check_written_object(sr_bytes[0], tmp_path)
    study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    assert summary.study_instance_uid == study_uid
    assert summary.verdict is Verdict.PRESENT
    assert summary.algorithm_name and summary.algorithm_version
    slice_of = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): k
        for k, p in enumerate(paths)
    }
    distances = []
    for finding in summary.findings:
        k = slice_of[finding.referenced_sop_instance_uid]
        col, row = np.mean(np.array(finding.points[:-1]), axis=0)
        distances.append(
            float(np.linalg.norm((np.array([k, row, col]) - truth) * np.array(SPACING)))
        )
    assert min(distances) <= 5.0, f"nearest finding {min(distances):.1f} mm from the nodule"

    with httpx.Client(base_url=f"http://127.0.0.1:{router.http_port}") as api:
        view = api.get(f"/studies/{study_uid}").json()
        assert view["state"] == "done"
        assert view["series"][0]["rules"] == ["chest-ct-lung-nodules"]
        assert view["jobs"][0]["state"] == "done" and view["jobs"][0]["verdict"] == "present"
        assert view["timings"]["last_image_to_result_stored_s"] is not None
        metrics = api.get("/metrics").text
        assert f'radrouter_instances_received_total{{status="success"}} {SHAPE[0]}.0' in metrics
        assert "radrouter_last_image_to_result_stored_seconds_count" in metrics
        assert api.get("/readyz").json()["ready"] is True


def test_a_study_without_nodules_gets_an_sr_that_states_absent(
    orthanc: Orthanc, start_router: StartRouter, tmp_path: Path
) -> None:
    paths, truth = make_study(tmp_path / "ct", seed=202, nodule_mm=None)
    assert truth is None
    study_id = upload(orthanc, paths)
    router = start_router(router_yaml(orthanc))
    orthanc.add_modality("radrouter-negative", "RADROUTER", router.dicom_port)
    orthanc.push_to_modality("radrouter-negative", [study_id])
    summary = check_written_object(wait_for_sr(orthanc, study_id)[0], tmp_path)
    assert summary.verdict is Verdict.ABSENT
    assert summary.findings == ()
    assert any("not for clinical use" in s.lower() for s in summary.statements)
