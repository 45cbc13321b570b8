"""Algorithms, findings, studies and notifications for the worklist tests."""

from __future__ import annotations

import datetime

from algorithms import codes as algorithm_codes
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Code,
    Finding,
    ImageRegion,
    Measurement,
    Qualifier,
    Verdict,
)
from algorithms.finding_words import KeyImage
from algorithms.lung_nodule.plugin import LungNoduleDetector
from config.schema import Priority, PriorityFlag
from worklist.facts import Outcome, StudyFacts
from worklist.notification import Notification, build_notification
from worklist.priority import PriorityPolicy

PULMONARY_EMBOLISM = Code("59282003", "SCT", "Pulmonary embolism")
RIGHT_LOWER_LOBE = Code("266005", "SCT", "Lower lobe of right lung")
LATERALITY = Code("272741003", "SCT", "Laterality")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")
CHANGE = Code("263703002", "SCT", "Changed status")
NEW = Code("7147002", "SCT", "New")

PE_DETECTOR = AlgorithmInfo(
    name="pe",
    display_name="Test PE Detector",
    version="1.2.0",
    manufacturer="radrouter tests",
    device_uid="2.25.240951385843871049347362098573451283845",
    modalities=frozenset({"CT"}),
    intended_use="Tests of the worklist priority only.",
    max_runtime_s=60.0,
    target=PULMONARY_EMBOLISM,
)
NODULE_DETECTOR = LungNoduleDetector.info

CREATED_AT = datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)

STUDY = StudyFacts(
    study_instance_uid="1.2.826.0.1.3680043.8.498.1234567890",
    accession_number="ACC-2025-0042",
    modality="CT",
    study_date="20250304",
    study_time="050000",
    patient_id="PAT-000123",
    issuer_of_patient_id="HOSP",
    patient_name="Muster^Erika^^Dr.",
    patient_birth_date="19640812",
    patient_sex="F",
)


PE_IMAGE = KeyImage(series_number=4, instance_number=120)
"""Where the PE test finding is in the PACS viewer: series 4, image 120."""


def region() -> ImageRegion:
    return ImageRegion(10, ((1.0, 1.0), (5.0, 1.0), (5.0, 5.0), (1.0, 1.0)))


def pe_finding(probability: float, *, left: bool = False) -> Finding:
    laterality = Qualifier(LATERALITY, LEFT if left else RIGHT)
    return Finding(
        PULMONARY_EMBOLISM,
        probability,
        (10.0, 20.0, 30.0),
        region(),
        finding_site=RIGHT_LOWER_LOBE if not left else None,
        qualifiers=(laterality,),
    )


def nodule(long_axis_mm: float, probability: float = 0.9, *, new: bool = False) -> Finding:
    return Finding(
        algorithm_codes.LUNG_NODULE,
        probability,
        (10.0, 20.0, 30.0),
        region(),
        measurements=(
            Measurement(algorithm_codes.LONG_AXIS, long_axis_mm, algorithm_codes.MILLIMETRE),
            Measurement(algorithm_codes.VOLUME, 300.0, algorithm_codes.CUBIC_MILLIMETRE),
        ),
        finding_site=algorithm_codes.LUNG,
        tracking_id="Nodule 1",
        qualifiers=(Qualifier(CHANGE, NEW),) if new else (),
    )


def positive(*findings: Finding, probability: float | None = None) -> AlgorithmResult:
    return AlgorithmResult(Verdict.PRESENT, findings, probability=probability)


NEGATIVE = AlgorithmResult(Verdict.ABSENT)
NOT_ASSESSED = AlgorithmResult(Verdict.NOT_ASSESSED, reason="slices too thick (5 mm)")


def policy(yaml_like: dict[str, list[dict[str, object]]]) -> PriorityPolicy:
    return {
        name: [PriorityFlag.model_validate(flag) for flag in flags]
        for name, flags in yaml_like.items()
    }


POLICY = policy(
    {
        "pe": [
            {
                "when": {"finding": "Pulmonary embolism", "min_probability": 0.8},
                "raise_to": "stat",
                "label": "PE",
            }
        ],
        "lung_nodule": [
            {
                "when": {
                    "finding": "Nodule",
                    "measurements": {"Long axis": {"min": 8, "unit": "mm"}},
                },
                "raise_to": "urgent",
            }
        ],
    }
)


def notification(
    outcome: Outcome,
    algorithm: AlgorithmInfo = PE_DETECTOR,
    *,
    study: StudyFacts = STUDY,
    lane: Priority = Priority.ROUTINE,
    notification_id: str = "result-1",
    key_images: tuple[KeyImage | None, ...] = (),
) -> Notification:
    return build_notification(
        notification_id,
        study,
        algorithm,
        outcome,
        lane,
        POLICY,
        created_at=CREATED_AT,
        key_images=key_images,
    )
