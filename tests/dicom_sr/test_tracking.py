"""Tracking of findings: identifiers, derived UIDs, UIDs carried over from a prior exam."""

from __future__ import annotations

from dataclasses import replace

import pytest

from algorithms.contract import AlgorithmResult, Verdict
from dicom_sr.tracking import finding_tracking, tracking_uid

STUDY = "1.2.826.0.1.3680043.8.498.1"


def test_findings_get_uids_derived_from_study_algorithm_and_identifier(
    present_result: AlgorithmResult,
) -> None:
    tracking = finding_tracking(present_result, STUDY, "lung_nodule")

    assert [t.identifier for t in tracking] == ["Nodule 1", "Nodule 2"]
    assert [t.uid for t in tracking] == [
        tracking_uid(STUDY, "lung_nodule", "Nodule 1"),
        tracking_uid(STUDY, "lung_nodule", "Nodule 2"),
    ]
    assert tracking[0].uid != tracking_uid("1.2.3", "lung_nodule", "Nodule 1")


def test_carried_over_uids_are_kept_and_unknown_identifiers_ignored(
    present_result: AlgorithmResult,
) -> None:
    carried_over = {"Nodule 2": "1.2.3.4", "Nodule 7": "1.2.3.7"}

    tracking = finding_tracking(present_result, STUDY, "lung_nodule", carried_over)

    assert [t.uid for t in tracking] == [
        tracking_uid(STUDY, "lung_nodule", "Nodule 1"),
        "1.2.3.4",
    ]


def test_carried_over_uid_that_is_not_a_uid_is_refused(present_result: AlgorithmResult) -> None:
    with pytest.raises(ValueError, match=r"tracking_uids\['Nodule 1'\] '1.02' is not a DICOM"):
        finding_tracking(present_result, STUDY, "lung_nodule", {"Nodule 1": "1.02"})


def test_findings_without_tracking_id_are_numbered_by_type(
    present_result: AlgorithmResult,
) -> None:
    unnamed = AlgorithmResult(
        Verdict.PRESENT, tuple(replace(f, tracking_id="") for f in present_result.findings)
    )

    assert [t.identifier for t in finding_tracking(unnamed, STUDY, "x")] == [
        "Nodule 1",
        "Nodule 2",
    ]
