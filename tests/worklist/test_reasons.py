"""The reason of each shipped algorithm's kind of finding, as a radiologist reads it.

Findings are shaped as the plugins make them (codes, sites, qualifiers, measurements); the PE
and fracture flags are the shipped default configuration's, the nodule flag the documented
example's. The image is the Series Number and Instance Number the router stored for the
finding's slice.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms import codes
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
from algorithms.fracture.plugin import FractureDetector
from algorithms.lung_nodule.plugin import LungNoduleDetector
from algorithms.ms_lesion.plugin import MSLesionSegmenter
from algorithms.pe.plugin import PulmonaryEmbolismDetector
from config.loader import load_default_config
from config.schema import Priority
from tests.worklist import support
from worklist.facts import AlgorithmFailure, Outcome, StudyFacts
from worklist.priority import DecisionStatus, PriorityDecision, PriorityPolicy, decide_priority

SHIPPED = load_default_config().worklist.priority_policy
NODULE_POLICY = support.policy(
    {
        "lung_nodule": [
            {
                "when": {
                    "finding": "Nodule",
                    "measurements": {"Long axis": {"min": 8, "unit": "mm"}},
                },
                "raise_to": "urgent",
            }
        ]
    }
)
MS_POLICY = support.policy(
    {"ms_lesion": [{"when": {"qualifiers": {"Changed status": "New"}}, "raise_to": "urgent"}]}
)
MS_COUNT_POLICY = support.policy(
    {
        "ms_lesion": [
            {"when": {"measurements": {"Number of new lesions": {"min": 1}}}, "raise_to": "urgent"}
        ]
    }
)
JARGON = re.compile(r"flag|polic|priority|threshold|criteri|p=|met\b", re.IGNORECASE)
"""Words of the configuration (or of the model's internals) that a reason never uses."""


def decide(
    outcome: Outcome,
    algorithm: AlgorithmInfo,
    policy: PriorityPolicy,
    *images: KeyImage | None,
    modality: str = "CT",
) -> PriorityDecision:
    study = StudyFacts(support.STUDY.study_instance_uid, modality=modality)
    return decide_priority(outcome, algorithm, study, Priority.ROUTINE, policy, key_images=images)


def finding(
    kind: Code,
    probability: float,
    *,
    site: Code | None = None,
    qualifiers: tuple[Qualifier, ...] = (),
    long_axis_mm: float | None = None,
    volume_mm3: float | None = None,
) -> Finding:
    measurements = []
    if long_axis_mm is not None:
        measurements.append(Measurement(codes.LONG_AXIS, long_axis_mm, codes.MILLIMETRE))
    if volume_mm3 is not None:
        measurements.append(Measurement(codes.VOLUME, volume_mm3, codes.CUBIC_MILLIMETRE))
    return Finding(
        kind,
        probability,
        (40.0, 100.0, 120.0),
        ImageRegion(40, ((110.0, 90.0), (130.0, 90.0), (130.0, 110.0), (110.0, 90.0))),
        measurements=tuple(measurements),
        finding_site=site,
        qualifiers=qualifiers,
    )


def embolus(probability: float, side: Code, level: Code, site: Code) -> Finding:
    """As ``algorithms.pe.plugin._finding``: laterality and level qualifiers, an artery."""
    return finding(
        codes.PULMONARY_EMBOLISM,
        probability,
        site=site,
        qualifiers=(
            Qualifier(codes.LATERALITY, side),
            Qualifier(codes.TOPOGRAPHICAL_MODIFIER, level),
        ),
        volume_mm3=850.0,
    )


def lesion(probability: float, long_axis_mm: float, change: Code | None) -> Finding:
    """As ``algorithms.ms_lesion.plugin._finding``: a white-matter lesion with its change."""
    return finding(
        codes.DEMYELINATION,
        probability,
        site=codes.CEREBRAL_WHITE_MATTER,
        qualifiers=() if change is None else (Qualifier(codes.CHANGED_STATUS, change),),
        long_axis_mm=long_axis_mm,
        volume_mm3=60.0,
    )


# --- pulmonary embolism ----------------------------------------------------------------------

PE = PulmonaryEmbolismDetector.info


def test_pe_names_side_level_artery_and_the_image() -> None:
    result = AlgorithmResult(
        Verdict.PRESENT,
        (embolus(0.91, codes.RIGHT, codes.LOBAR, codes.PULMONARY_ARTERY),),
        probability=0.91,
    )

    decision = decide(result, PE, SHIPPED, KeyImage(4, 120))

    assert decision.priority is Priority.STAT
    assert decision.reason == (
        "AI: suspected pulmonary embolism, right lobar pulmonary artery, series 4 image 120 "
        "[radrouter Pulmonary Embolism Flagging 0.5.0]"
    )


def test_central_pe_names_the_main_artery_once_and_counts_the_others() -> None:
    result = AlgorithmResult(
        Verdict.PRESENT,
        (
            embolus(0.62, codes.RIGHT, codes.SEGMENTAL, codes.PULMONARY_ARTERY),
            embolus(0.88, codes.LEFT, codes.CENTRAL, codes.LEFT_PULMONARY_ARTERY),
        ),
        probability=0.88,
    )

    decision = decide(result, PE, SHIPPED, KeyImage(4, 131), KeyImage(4, 98))

    assert decision.reason == (
        "AI: suspected pulmonary embolism, central left pulmonary artery, series 4 image 98 "
        "(+1 more finding) [radrouter Pulmonary Embolism Flagging 0.5.0]"
    )


def test_pe_negative_not_assessed_and_failure_keep_their_statements() -> None:
    negative = AlgorithmResult(Verdict.ABSENT, probability=0.04, reason="no PE")
    not_assessed = AlgorithmResult(Verdict.NOT_ASSESSED, reason="No contrast in the arteries.")

    assert decide(negative, PE, SHIPPED).reason == (
        "AI: no pulmonary embolism found [radrouter Pulmonary Embolism Flagging 0.5.0]"
    )
    assert decide(not_assessed, PE, SHIPPED).reason == (
        "AI: pulmonary embolism not assessed: No contrast in the arteries "
        "[radrouter Pulmonary Embolism Flagging 0.5.0]"
    )
    assert decide(AlgorithmFailure("timed out after 300 s"), PE, SHIPPED).reason == (
        "AI: pulmonary embolism algorithm failed: timed out after 300 s "
        "[radrouter Pulmonary Embolism Flagging 0.5.0]"
    )


# --- fracture on a radiograph ----------------------------------------------------------------

FRACTURE = FractureDetector.info


def test_fracture_on_a_radiograph_names_the_bone_the_side_of_the_image_and_the_image() -> None:
    result = AlgorithmResult(
        Verdict.PRESENT, (finding(codes.FRACTURE, 0.8, site=codes.FEMUR),), probability=0.8
    )

    decision = decide(result, FRACTURE, SHIPPED, KeyImage(1, 1, laterality="L"), modality="DX")

    assert decision.priority is Priority.URGENT
    assert decision.reason == (
        "AI: suspected fracture, left femur, series 1 image 1 "
        "[radrouter Long-Bone Fracture Detector 0.1.0]"
    )


def test_fracture_without_a_site_still_names_the_image() -> None:
    result = AlgorithmResult(Verdict.PRESENT, (finding(codes.FRACTURE, 0.8),), probability=0.8)

    decision = decide(result, FRACTURE, SHIPPED, KeyImage(1, 1), modality="CR")

    assert decision.reason == (
        "AI: suspected fracture, series 1 image 1 [radrouter Long-Bone Fracture Detector 0.1.0]"
    )


def test_fracture_without_a_policy_is_called_a_fracture_not_a_fracture_of_bone() -> None:
    negative = AlgorithmResult(Verdict.ABSENT, reason="low risk")
    result = AlgorithmResult(Verdict.PRESENT, (finding(codes.FRACTURE, 0.8),), probability=0.8)

    assert decide(negative, FRACTURE, {}).reason.startswith("AI: no fracture found [")
    assert decide(result, FRACTURE, {}).reason.startswith("AI: suspected fracture [")


# --- lung nodule -----------------------------------------------------------------------------

NODULE = LungNoduleDetector.info


def test_nodule_is_named_by_its_size_site_and_image() -> None:
    result = AlgorithmResult(
        Verdict.PRESENT,
        (
            finding(codes.LUNG_NODULE, 0.71, site=codes.LUNG, long_axis_mm=5.2, volume_mm3=40.0),
            finding(codes.LUNG_NODULE, 0.64, site=codes.LUNG, long_axis_mm=12.0, volume_mm3=620.0),
        ),
    )

    decision = decide(result, NODULE, NODULE_POLICY, KeyImage(3, 40), KeyImage(3, 87))

    assert decision.priority is Priority.URGENT
    assert decision.reason == (
        "AI: 12 mm nodule, lung, series 3 image 87 (+1 more finding) "
        "[radrouter Lung Nodule Detector 0.2.0]"
    )


def test_nodule_with_its_side_is_in_the_right_or_left_lung() -> None:
    """As ``algorithms.lung_nodule.plugin._finding``: a laterality qualifier on the lung."""
    right = (Qualifier(codes.LATERALITY, codes.RIGHT),)
    result = AlgorithmResult(
        Verdict.PRESENT,
        (finding(codes.LUNG_NODULE, 0.9, site=codes.LUNG, qualifiers=right, long_axis_mm=12.0),),
    )

    decision = decide(result, NODULE, NODULE_POLICY, KeyImage(3, 87))

    assert decision.reason == (
        "AI: 12 mm nodule, right lung, series 3 image 87 [radrouter Lung Nodule Detector 0.2.0]"
    )


def test_small_nodule_is_listed_the_same_way_without_raising() -> None:
    result = AlgorithmResult(
        Verdict.PRESENT,
        (finding(codes.LUNG_NODULE, 0.71, site=codes.LUNG, long_axis_mm=5.2, volume_mm3=40.0),),
    )

    decision = decide(result, NODULE, NODULE_POLICY, KeyImage(3, 40))

    assert decision.status is DecisionStatus.FOUND
    assert decision.reason == (
        "AI: 5.2 mm nodule, lung, series 3 image 40 [radrouter Lung Nodule Detector 0.2.0]"
    )


def test_nodule_in_a_multi_frame_image_names_its_frame() -> None:
    result = AlgorithmResult(
        Verdict.PRESENT, (finding(codes.LUNG_NODULE, 0.9, site=codes.LUNG, long_axis_mm=9.0),)
    )

    decision = decide(result, NODULE, NODULE_POLICY, KeyImage(3, 1, frame_number=87))

    assert "9 mm nodule, lung, series 3 image 1 frame 87 [" in decision.reason


def test_nodule_whose_image_is_unknown_is_still_described() -> None:
    result = AlgorithmResult(
        Verdict.PRESENT, (finding(codes.LUNG_NODULE, 0.9, site=codes.LUNG, long_axis_mm=9.0),)
    )

    assert decide(result, NODULE, NODULE_POLICY, None).reason == (
        "AI: 9 mm nodule, lung [radrouter Lung Nodule Detector 0.2.0]"
    )


def test_a_label_for_some_nodules_never_names_every_nodule() -> None:
    policy = support.policy(
        {
            "lung_nodule": [
                {
                    "when": {"finding": "Nodule", "qualifiers": {"Changed status": "New"}},
                    "raise_to": "urgent",
                    "label": "new nodule",
                }
            ]
        }
    )
    stable = AlgorithmResult(
        Verdict.PRESENT, (finding(codes.LUNG_NODULE, 0.9, site=codes.LUNG, long_axis_mm=6.0),)
    )

    assert decide(stable, NODULE, policy, KeyImage(3, 50)).reason.startswith(
        "AI: 6 mm nodule, lung, series 3 image 50 ["
    )
    assert decide(AlgorithmResult(Verdict.ABSENT), NODULE, policy).reason.startswith(
        "AI: no nodule found ["
    )


# --- MS lesions ------------------------------------------------------------------------------

MS = MSLesionSegmenter.info


def test_new_ms_lesion_names_size_site_change_and_image() -> None:
    result = AlgorithmResult(
        Verdict.PRESENT,
        (lesion(0.95, 9.0, codes.STABLE), lesion(0.7, 4.0, codes.NEW)),
    )

    decision = decide(result, MS, MS_POLICY, KeyImage(5, 33), KeyImage(5, 40), modality="MR")

    assert decision.priority is Priority.URGENT
    assert decision.reason == (
        "AI: 4 mm demyelinating lesion, cerebral white matter, new, series 5 image 40 "
        "(+1 more finding) [radrouter MS Lesion Segmentation 0.1.0]"
    )


def test_a_count_of_new_lesions_is_stated_without_pointing_at_one_lesion() -> None:
    result = AlgorithmResult(
        Verdict.PRESENT,
        (lesion(0.95, 9.0, codes.STABLE), lesion(0.7, 4.0, codes.NEW)),
        measurements=(Measurement(codes.NUMBER_OF_NEW_LESIONS, 1.0, codes.NO_UNITS),),
    )

    decision = decide(result, MS, MS_COUNT_POLICY, KeyImage(5, 33), KeyImage(5, 40), modality="MR")

    assert decision.reason == (
        "AI: suspected demyelinating lesion, number of new lesions 1, 2 findings marked "
        "[radrouter MS Lesion Segmentation 0.1.0]"
    )


# --- every positive reason -------------------------------------------------------------------

KINDS = [
    (PE, embolus(0.9, codes.LEFT, codes.SEGMENTAL, codes.PULMONARY_ARTERY)),
    (FRACTURE, finding(codes.FRACTURE, 0.9, site=codes.TIBIA)),
    (NODULE, finding(codes.LUNG_NODULE, 0.9, site=codes.LUNG, long_axis_mm=7.0)),
    (MS, lesion(0.9, 5.0, codes.NEW)),
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(range(len(KINDS))), min_size=1, max_size=4),
    st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    st.sampled_from([SHIPPED, NODULE_POLICY, MS_POLICY, {}]),
    st.integers(1, 9999),
)
def test_a_positive_reason_names_one_findings_image_and_no_configuration(
    picks: list[int], probabilities: list[float], policy: PriorityPolicy, first_image: int
) -> None:
    algorithm = KINDS[picks[0]][0]
    findings = tuple(
        Finding(
            KINDS[pick][1].finding_type,
            probabilities[n],
            KINDS[pick][1].centre_voxel,
            KINDS[pick][1].region,
            KINDS[pick][1].measurements,
            KINDS[pick][1].finding_site,
            qualifiers=KINDS[pick][1].qualifiers,
        )
        for n, pick in enumerate(picks)
    )
    images = tuple(KeyImage(7, first_image + n) for n in range(len(findings)))

    decision = decide(AlgorithmResult(Verdict.PRESENT, findings), algorithm, policy, *images)

    named = re.findall(r"series 7 image (\d+)", decision.reason)
    assert len(named) == 1 and int(named[0]) in {image.instance_number for image in images}
    assert not JARGON.search(decision.reason.split(" [")[0]), decision.reason
    assert decision.reason.endswith(f"[{algorithm.display_name} {algorithm.version}]")
