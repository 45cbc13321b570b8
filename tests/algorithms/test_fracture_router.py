"""End to end: radiographs sent to a running router come back as TID 1500 SRs about fractures;
a suspected fracture raises the study to urgent with the reason."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from algorithms import codes
from algorithms.contract import Verdict
from algorithms.fracture.postprocess import iou
from dicom_sr.read import ReportSummary, read_measurement_report
from testing.corpus import pydicom_test_file
from testing.dicom_tools import run_dciodvfy
from testing.router_process import StartRouter, storescu, wait_state
from testing.storescp import ReceivingPacs
from testing.synthetic_dicom import new_patient_study, write_radiograph
from training.fracture.evaluate import box_of
from training.fracture.synth import SyntheticRadiograph, generate_radiograph

pytestmark = pytest.mark.slow


def config(pacs: ReceivingPacs) -> str:
    """Every radiograph to the fracture detector (the shipped default routes long-bone body
    parts only), and the default's worklist policy for it."""
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"destinations:\n  pacs: {pacs.destination_yaml()}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, hard_cap_s: 60}\n"
        "rules:\n"
        "  - name: radiographs-fracture\n"
        "    when: {Modality: {in: [CR, DX]}}\n"
        "    run: fracture\n"
        "    priority: urgent\n"
        "    send_to: [pacs]\n"
        "worklist:\n"
        "  priority_policy:\n"
        "    fracture:\n"
        "      - when: {finding: Fracture of bone}\n"
        "        raise_to: urgent\n"
        "        label: fracture\n"
    )


def read_report(path: Path) -> ReportSummary:
    assert run_dciodvfy(path).errors == []
    return read_measurement_report(pydicom.dcmread(path))


def write_case(radiograph: SyntheticRadiograph, seed: int, folder: Path) -> Path:
    return write_radiograph(
        radiograph.pixels,
        new_patient_study(seed),
        folder,
        photometric_interpretation=radiograph.photometric_interpretation,
        bits_stored=radiograph.bits_stored,
        pixel_spacing_mm=radiograph.pixel_spacing_mm,
        body_part=radiograph.body_part,
    )


def study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def only(reports: dict[str, list[Path]], uid: str) -> Path:
    (path,) = reports[uid]
    return path


def first_displaced_fracture() -> tuple[int, SyntheticRadiograph]:
    seed = 0
    while True:
        radiograph = generate_radiograph(seed, fracture=True, size=448)
        if radiograph.fractures and radiograph.fractures[0].displacement_mm >= 2.0:
            return seed, radiograph
        seed += 1


def test_radiographs_get_an_sr_with_the_fracture_boxed_or_stated_absent(
    start_router: StartRouter, storescp: ReceivingPacs, tmp_path: Path
) -> None:
    seed, fractured = first_displaced_fracture()
    intact = generate_radiograph(1, fracture=False, size=448)
    positive = write_case(fractured, 7001, tmp_path / "positive")
    negative = write_case(intact, 7002, tmp_path / "negative")
    router = start_router(config(storescp))
    assert "fracture" in router.service.registry  # the installed entry point
    storescu(router, [positive, negative])

    reports = storescp.wait_for("SR", {study_uid(positive), study_uid(negative)})
    present = read_report(only(reports, study_uid(positive)))
    assert present.verdict is Verdict.PRESENT, present.reason
    assert present.algorithm_name == "fracture"
    assert present.target.value == codes.FRACTURE.value
    source_uid = str(pydicom.dcmread(positive, stop_before_pixels=True).SOPInstanceUID)
    truth = fractured.fractures[0].box
    overlaps = []
    for finding in present.findings:
        assert finding.finding_type.value == codes.FRACTURE.value
        assert finding.referenced_sop_instance_uid == source_uid
        assert len(finding.points) == 5 and finding.points[0] == finding.points[-1]
        assert finding.probability is not None
        overlaps.append(iou(truth, box_of(finding.points)))
    assert max(overlaps) >= 0.3, f"seed {seed}: boxes {overlaps} miss the fracture {truth}"
    assert present.findings[0].finding_site is not None

    absent = read_report(only(reports, study_uid(negative)))
    assert absent.verdict is Verdict.ABSENT and absent.findings == ()
    assert "low risk" in absent.reason.lower()
    assert any("not for clinical use" in s.lower() for s in absent.statements)

    (flag,) = wait_state(router, study_uid(positive), {"done"})["flags"]
    assert flag["priority"] == "urgent" and flag["raised"] == 1
    assert flag["reason"].startswith("AI: suspected fracture, ")
    quiet = wait_state(router, study_uid(negative), {"done"})
    assert all(f["raised"] == 0 for f in quiet["flags"])


def test_real_radiographs_go_through_with_a_result_or_not_assessed(
    start_router: StartRouter, storescp: ReceivingPacs
) -> None:
    leg = pydicom_test_file("RG3_UNCR.dcm")
    chest = pydicom_test_file("RG1_UNCR.dcm")
    router = start_router(config(storescp))
    storescu(router, [leg, chest])

    reports = storescp.wait_for("SR", {study_uid(leg), study_uid(chest)})
    chest_report = read_report(only(reports, study_uid(chest)))
    assert chest_report.verdict is Verdict.NOT_ASSESSED
    assert "not a long-bone radiograph" in chest_report.reason
    leg_report = read_report(only(reports, study_uid(leg)))
    assert leg_report.verdict in (Verdict.PRESENT, Verdict.ABSENT)
