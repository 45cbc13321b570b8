"""End to end: contrast chest CTs sent to a running router come back to the PACS as TID 1500
SRs that flag the pulmonary embolism where it is, or state its absence; a positive study is
raised to stat on the worklist with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from algorithms import codes
from algorithms.contract import Verdict
from dicom_sr.read import ReportSummary, read_measurement_report
from dicom_sr.read_seg import read_segmentation
from testing.dicom_tools import run_dciodvfy
from testing.router_process import StartRouter, storescu, study_uid_of, wait_state
from testing.storescp import ReceivingPacs
from testing.synthetic_dicom import new_patient_study, write_ct_series
from training.pe.synth import ClotSpec, SyntheticContrastCT, generate_contrast_chest_ct

pytestmark = pytest.mark.slow

SHAPE = (100, 224, 224)
SPACING = (2.0, 1.3, 1.3)


def config(pacs: ReceivingPacs) -> str:
    """The PE rule and worklist policy of the shipped default configuration, in small."""
    return (
        "node: {ae_title: RADROUTER, bind: 127.0.0.1, port: {port}}\n"
        "http: {host: 127.0.0.1, port: 0}\n"
        f"destinations:\n  pacs: {pacs.destination_yaml()}\n"
        "completion: {settle_after_release_s: 0.2, series_idle_s: 3, study_idle_s: 10, hard_cap_s: 120}\n"
        "rules:\n"
        "  - name: contrast-chest-ct-pe\n"
        "    when: {Modality: CT, ContrastBolusAgent: {exists: true}}\n"
        "    run: pe\n"
        "    priority: stat\n"
        "    send_to: [pacs]\n"
        "worklist:\n"
        "  priority_policy:\n"
        "    pe:\n"
        "      - when: {finding: Pulmonary embolism}\n"
        "        raise_to: stat\n"
        "        label: pulmonary embolism\n"
    )


def read_report(path: Path) -> ReportSummary:
    assert run_dciodvfy(path).errors == []
    return read_measurement_report(pydicom.dcmread(path))


def write_case(ct: SyntheticContrastCT, seed: int, folder: Path) -> list[Path]:
    paths = write_ct_series(
        ct.hu, ct.spacing_mm, new_patient_study(seed), folder, series_description="CT CHEST C+"
    )
    for path in paths:  # a contrast CT names its agent
        ds = pydicom.dcmread(path)
        ds.ContrastBolusAgent = "IOHEXOL"
        ds.save_as(path, enforce_file_format=True)
    return paths


def test_contrast_chest_cts_get_an_sr_flagging_the_embolus_or_stating_absent(
    start_router: StartRouter, storescp: ReceivingPacs, tmp_path: Path
) -> None:
    embolised = generate_contrast_chest_ct(
        101,
        shape=SHAPE,
        spacing_mm=SPACING,
        phase="ctpa",
        clots=[ClotSpec("lobar", "right", occlusive=True)],
    )
    clear = generate_contrast_chest_ct(111, shape=SHAPE, spacing_mm=SPACING, phase="ctpa", clots=[])
    positive = write_case(embolised, 8101, tmp_path / "positive")
    negative = write_case(clear, 8111, tmp_path / "negative")
    router = start_router(config(storescp))
    assert "pe" in router.service.registry  # the installed entry point, nothing injected
    storescu(router, positive + negative)

    positive_uid, negative_uid = study_uid_of(positive), study_uid_of(negative)
    reports = storescp.wait_for("SR", {positive_uid, negative_uid})
    (present_path,) = reports[positive_uid]
    present = read_report(present_path)
    assert present.verdict is Verdict.PRESENT, present.reason
    assert present.algorithm_name == "pe"
    assert present.target.value == codes.PULMONARY_EMBOLISM.value
    assert present.reason.startswith("suspected PE, right lobar artery")
    slice_of = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): k
        for k, p in enumerate(positive)
    }
    clot = np.argwhere(embolised.clot_labels > 0).astype(float)
    distances = []
    for finding in present.findings:
        assert finding.finding_type.value == codes.PULMONARY_EMBOLISM.value
        assert finding.probability is not None
        k = slice_of[finding.referenced_sop_instance_uid]
        col, row = np.mean(np.array(finding.points[:-1]), axis=0)
        gap = np.linalg.norm((clot - [k, row, col]) * np.array(SPACING), axis=1).min()
        distances.append(float(gap))
    assert min(distances) <= 6.0, f"nearest finding {min(distances):.1f} mm from the clot"
    (seg_path,) = storescp.wait_for("SEG", {positive_uid}, timeout_s=30)[positive_uid]
    assert run_dciodvfy(seg_path).errors == []
    segmentation = read_segmentation(pydicom.dcmread(seg_path))
    assert [s.tracking_uid for s in segmentation.segments] == [
        f.tracking_uid for f in present.findings
    ]

    (absent_path,) = reports[negative_uid]
    absent = read_report(absent_path)
    assert absent.verdict is Verdict.ABSENT and absent.findings == ()
    assert "no pulmonary embolism" in absent.reason.lower()
    assert any("not for clinical use" in s.lower() for s in absent.statements)

    flagged = wait_state(router, positive_uid, {"done"})
    (flag,) = flagged["flags"]
    assert flag["priority"] == "stat" and flag["raised"] == 1 and flag["verdict"] == "present"
    assert flag["reason"].startswith(
        "AI: suspected pulmonary embolism, right lobar pulmonary artery, series "
    )
    quiet = wait_state(router, negative_uid, {"done"})
    assert all(f["raised"] == 0 for f in quiet["flags"])
