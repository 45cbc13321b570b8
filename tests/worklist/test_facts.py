"""Study facts and notifications: valid by construction, patient data kept out of repr."""

from __future__ import annotations

import datetime

import pytest

from algorithms.finding_words import KeyImage
from config.schema import Priority
from tests.worklist import support
from worklist.facts import AlgorithmFailure, StudyFacts, conformant_date, priority_from_dicom
from worklist.notification import Notification


def test_repr_of_study_facts_and_notification_holds_no_patient_data() -> None:
    notification = support.notification(support.positive(support.pe_finding(0.9)))

    for text in (repr(support.STUDY), repr(notification)):
        for secret in ("PAT-000123", "Muster", "19640812", "ACC-2025-0042", "HOSP"):
            assert secret not in text
    assert support.STUDY.study_instance_uid in repr(support.STUDY)


def test_study_facts_from_header_keywords() -> None:
    facts = StudyFacts.from_header(
        {
            "StudyInstanceUID": "1.2.3",
            "AccessionNumber": " A1 ",
            "Modality": "CT",
            "PatientID": "P1",
            "PatientName": "Doe^Jane",
            "PatientSex": "f",
            "StudyDate": "20250101",
            "RequestedProcedurePriority": "HIGH",
        }
    )

    assert (facts.accession_number, facts.patient_sex) == ("A1", "F")
    assert facts.existing_priority is Priority.URGENT
    assert facts.issuer_of_patient_id == ""


def test_study_facts_from_a_non_conformant_header_keep_what_can_be_read() -> None:
    """A modality's birth date 02.01.1960 once stopped the flag reaching the RIS."""
    header = {
        "StudyInstanceUID": "1.2.3",
        "AccessionNumber": "A" * 20,  # longer than SH allows
        "PatientID": "P1",
        "PatientBirthDate": "02.01.1960",  # day or month first? not guessed
        "StudyDate": "2025-01-31",  # year first: unambiguous
        "StudyTime": "10:30:00",
        "PatientSex": "X",
    }
    facts = StudyFacts.from_header(header)
    assert (facts.patient_birth_date, facts.study_date, facts.study_time) == (
        "",
        "20250131",
        "103000",
    )
    assert (facts.accession_number, facts.patient_sex, facts.patient_id) == ("", "", "P1")
    assert conformant_date("1960.01.02") == "19600102"
    assert conformant_date("19600102") == "19600102"
    assert conformant_date("1960-1-2") == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("STAT", Priority.STAT),
        ("high", Priority.URGENT),
        ("ROUTINE", Priority.ROUTINE),
        ("LOW", Priority.ROUTINE),
        ("", None),
        ("SOON", None),
    ],
)
def test_dicom_request_priority_maps_to_lanes(value: str, expected: Priority | None) -> None:
    assert priority_from_dicom(value) is expected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"study_instance_uid": "1.2.x"}, "study_instance_uid"),
        ({"study_instance_uid": "1.2", "accession_number": "A" * 17}, "accession_number"),
        ({"study_instance_uid": "1.2", "study_date": "2025-01-01"}, "study_date"),
        ({"study_instance_uid": "1.2", "study_time": "25:00"}, "study_time"),
        ({"study_instance_uid": "1.2", "patient_sex": "X"}, "patient_sex"),
    ],
)
def test_study_facts_refuse_invalid_values_naming_the_argument(
    arguments: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        StudyFacts(**arguments)  # type: ignore[arg-type]


def test_failure_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        AlgorithmFailure("  ")


def test_notification_needs_an_id_and_an_aware_time() -> None:
    made = support.notification(support.NEGATIVE)

    with pytest.raises(ValueError, match="notification_id"):
        Notification("", made.study, made.algorithm, made.outcome, made.decision, made.created_at)
    with pytest.raises(ValueError, match="timezone-aware"):
        Notification(
            "n",
            made.study,
            made.algorithm,
            made.outcome,
            made.decision,
            datetime.datetime(2025, 1, 1),
        )


def test_key_image_says_series_image_and_frame_as_far_as_known() -> None:
    assert KeyImage(3, 87).words() == "series 3 image 87"
    assert KeyImage(3, 1, frame_number=87).words() == "series 3 image 1 frame 87"
    assert KeyImage(None, 87).words() == "image 87"
    assert KeyImage(3, None, frame_number=5).words() == "series 3"
    assert KeyImage().words() == ""


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"instance_number": 0}, "instance_number"),
        ({"frame_number": -1}, "frame_number"),
        ({"laterality": "B"}, "laterality"),
    ],
)
def test_key_image_refuses_values_no_viewer_shows(
    arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        KeyImage(**arguments)  # type: ignore[arg-type]


def test_notification_carries_one_key_image_per_finding_or_refuses() -> None:
    result = support.positive(support.pe_finding(0.9))

    made = support.notification(result, key_images=(support.PE_IMAGE,))

    assert made.key_images == (support.PE_IMAGE,)
    with pytest.raises(ValueError, match="one per finding"):
        support.notification(result, key_images=(support.PE_IMAGE, support.PE_IMAGE))
    with pytest.raises(ValueError, match="no key_images"):
        support.notification(AlgorithmFailure("crash"), key_images=(support.PE_IMAGE,))
