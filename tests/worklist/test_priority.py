"""Worklist priority: flags raise, nothing lowers, and every outcome is stated in words."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms import codes as algorithm_codes
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Code,
    Finding,
    Measurement,
    Qualifier,
    Verdict,
)
from algorithms.finding_words import KeyImage, describe_location
from config.schema import Priority, PriorityFlag
from tests.worklist import support
from worklist.facts import AlgorithmFailure, Outcome, StudyFacts
from worklist.priority import (
    DecisionStatus,
    PriorityDecision,
    PriorityPolicy,
    decide_priority,
    most_urgent,
)


def decide(
    outcome: Outcome,
    *,
    algorithm: AlgorithmInfo = support.PE_DETECTOR,
    lane: Priority = Priority.ROUTINE,
    existing: Priority | None = None,
    policy: PriorityPolicy = support.POLICY,
    key_images: tuple[KeyImage | None, ...] = (),
) -> PriorityDecision:
    study = StudyFacts(support.STUDY.study_instance_uid, existing_priority=existing)
    return decide_priority(outcome, algorithm, study, lane, policy, key_images=key_images)


# --------------------------------------------------------------------------------------------
# Examples


def test_probable_pe_raises_a_routine_study_to_stat_naming_where_and_which_image() -> None:
    decision = decide(support.positive(support.pe_finding(0.93)), key_images=(support.PE_IMAGE,))

    assert decision.priority is Priority.STAT
    assert decision.base_priority is Priority.ROUTINE
    assert decision.flag_raised and decision.raised
    assert decision.status is DecisionStatus.FLAGGED
    assert decision.reason == (
        "AI: suspected PE, lower lobe of right lung, series 4 image 120 [Test PE Detector 1.2.0]"
    )


def test_pe_below_the_probability_threshold_is_stated_without_configuration_words() -> None:
    decision = decide(support.positive(support.pe_finding(0.5)), key_images=(support.PE_IMAGE,))

    assert decision.priority is Priority.ROUTINE
    assert decision.status is DecisionStatus.FOUND
    assert not decision.flag_raised
    assert decision.reason == (
        "AI: suspected PE, lower lobe of right lung, series 4 image 120 [Test PE Detector 1.2.0]"
    )


def test_study_level_probability_alone_can_raise_a_flag_and_says_no_location_was_given() -> None:
    result = AlgorithmResult(Verdict.PRESENT, probability=0.97)

    decision = decide(result)

    assert decision.priority is Priority.STAT
    assert decision.reason == "AI: suspected PE, no location given [Test PE Detector 1.2.0]"


def test_study_level_flag_points_at_the_most_probable_finding() -> None:
    result = support.positive(
        support.pe_finding(0.6), support.pe_finding(0.7, left=True), probability=0.95
    )
    images = (KeyImage(4, 80), KeyImage(4, 95))

    decision = decide(result, key_images=images)

    assert decision.priority is Priority.STAT
    assert decision.reason == (
        "AI: suspected PE, left, series 4 image 95 (+1 more finding) [Test PE Detector 1.2.0]"
    )


def test_large_nodule_raises_to_urgent_and_is_named_by_its_size() -> None:
    result = support.positive(support.nodule(12.0, 0.88))

    decision = decide(result, algorithm=support.NODULE_DETECTOR, key_images=(KeyImage(3, 87),))

    assert decision.priority is Priority.URGENT
    assert decision.reason == (
        "AI: 12 mm nodule, lung, series 3 image 87 [radrouter Lung Nodule Detector 0.2.0]"
    )


def test_small_nodule_does_not_raise() -> None:
    decision = decide(support.positive(support.nodule(5.0)), algorithm=support.NODULE_DETECTOR)

    assert decision.priority is Priority.ROUTINE
    assert decision.status is DecisionStatus.FOUND


def test_measurement_in_another_unit_never_matches() -> None:
    finding = Finding(
        algorithm_codes.LUNG_NODULE,
        0.9,
        (1.0, 1.0, 1.0),
        support.region(),
        measurements=(Measurement(algorithm_codes.LONG_AXIS, 1.2, Code("cm", "UCUM", "cm")),),
    )

    decision = decide(support.positive(finding), algorithm=support.NODULE_DETECTOR)

    assert decision.status is DecisionStatus.FOUND


def test_the_most_urgent_flag_wins_and_other_flagged_findings_are_counted() -> None:
    policy = support.policy(
        {
            "lung_nodule": [
                {"when": {"measurements": {"103339001": {"min": 6}}}, "raise_to": "urgent"},
                {"when": {"qualifiers": {"Changed status": "New"}}, "raise_to": "stat"},
            ]
        }
    )
    result = support.positive(support.nodule(7.0), support.nodule(4.0, new=True))

    decision = decide(result, algorithm=support.NODULE_DETECTOR, policy=policy)

    assert decision.priority is Priority.STAT
    assert decision.reason.startswith("AI: 4 mm nodule, lung, new (+1 more finding) [")


def test_flag_on_an_already_stat_study_is_reported_but_changes_nothing() -> None:
    decision = decide(support.positive(support.pe_finding(0.95)), lane=Priority.STAT)

    assert decision.priority is Priority.STAT
    assert decision.flag_raised
    assert not decision.raised


def test_existing_order_priority_is_kept_when_more_urgent_than_the_lane() -> None:
    decision = decide(support.NEGATIVE, existing=Priority.URGENT)

    assert decision.base_priority is Priority.URGENT
    assert decision.priority is Priority.URGENT


def test_negative_is_stated_and_keeps_the_priority() -> None:
    decision = decide(support.NEGATIVE, lane=Priority.URGENT)

    assert decision.priority is Priority.URGENT
    assert decision.status is DecisionStatus.NEGATIVE
    assert decision.reason == "AI: no PE found [Test PE Detector 1.2.0]"


def test_not_assessed_is_stated_with_its_reason() -> None:
    decision = decide(support.NOT_ASSESSED)

    assert decision.status is DecisionStatus.NOT_ASSESSED
    assert decision.priority is Priority.ROUTINE
    assert decision.reason == (
        "AI: PE not assessed: slices too thick (5 mm) [Test PE Detector 1.2.0]"
    )


def test_failure_is_stated_as_such_never_as_a_negative() -> None:
    decision = decide(AlgorithmFailure("timed out after 60 s.\nTraceback hidden"))

    assert decision.status is DecisionStatus.FAILED
    assert decision.reason == (
        "AI: PE algorithm failed: timed out after 60 s. Traceback hidden [Test PE Detector 1.2.0]"
    )


def test_algorithm_without_a_policy_never_raises() -> None:
    decision = decide(support.positive(support.pe_finding(0.99)), policy={})

    assert decision.priority is Priority.ROUTINE
    assert decision.reason == (
        "AI: suspected pulmonary embolism, lower lobe of right lung [Test PE Detector 1.2.0]"
    )


def test_flags_match_codes_by_value_or_meaning_in_any_case() -> None:
    for name in ("59282003", "pulmonary EMBOLISM"):
        policy = support.policy({"pe": [{"when": {"finding": name}, "raise_to": "urgent"}]})
        assert decide(support.positive(support.pe_finding(0.4)), policy=policy).priority is (
            Priority.URGENT
        )


def test_site_condition_needs_a_site() -> None:
    policy = support.policy(
        {"pe": [{"when": {"site": "Lower lobe of right lung"}, "raise_to": "urgent"}]}
    )

    right = decide(support.positive(support.pe_finding(0.9)), policy=policy)
    no_site = decide(support.positive(support.pe_finding(0.9, left=True)), policy=policy)

    assert right.priority is Priority.URGENT
    assert no_site.priority is Priority.ROUTINE


def test_location_puts_laterality_before_the_site_and_other_qualifiers_after() -> None:
    qualifiers = (
        Qualifier(support.CHANGE, support.NEW),
        Qualifier(support.LATERALITY, support.RIGHT),
    )

    assert describe_location(Code("45292006", "SCT", "Upper lobe"), qualifiers) == (
        "right upper lobe, new"
    )
    assert (
        describe_location(support.RIGHT_LOWER_LOBE, qualifiers) == "lower lobe of right lung, new"
    )
    assert describe_location(None, ()) == ""


def test_location_puts_the_level_with_the_side_and_falls_back_to_the_images_laterality() -> None:
    lobar = (
        Qualifier(algorithm_codes.LATERALITY, algorithm_codes.RIGHT),
        Qualifier(algorithm_codes.TOPOGRAPHICAL_MODIFIER, algorithm_codes.LOBAR),
    )

    assert describe_location(algorithm_codes.PULMONARY_ARTERY, lobar) == (
        "right lobar pulmonary artery"
    )
    assert describe_location(algorithm_codes.FEMUR, (), "L") == "left femur"
    assert describe_location(algorithm_codes.RIGHT_PULMONARY_ARTERY, (), "L") == (
        "right pulmonary artery"
    )
    assert describe_location(None, lobar) == "right, lobar"


def test_decision_refuses_to_lower_a_priority() -> None:
    with pytest.raises(ValueError, match="never lowers"):
        PriorityDecision(Priority.ROUTINE, Priority.STAT, DecisionStatus.FLAGGED, "x")
    with pytest.raises(ValueError, match="only a FLAGGED decision"):
        PriorityDecision(Priority.STAT, Priority.ROUTINE, DecisionStatus.NEGATIVE, "x")


def test_most_urgent_ignores_unknown_priorities() -> None:
    assert most_urgent(None, Priority.URGENT, Priority.ROUTINE) is Priority.URGENT
    assert most_urgent() is Priority.ROUTINE


# --------------------------------------------------------------------------------------------
# Properties

TYPES = [support.PULMONARY_EMBOLISM, algorithm_codes.LUNG_NODULE, Code("1", "SCT", "Other")]
priorities = st.sampled_from(list(Priority))


@st.composite
def findings(draw: st.DrawFn) -> Finding:
    return Finding(
        draw(st.sampled_from(TYPES)),
        draw(st.floats(0.0, 1.0)),
        (1.0, 2.0, 3.0),
        support.region(),
        measurements=(
            Measurement(
                algorithm_codes.LONG_AXIS,
                draw(st.floats(0.0, 50.0)),
                algorithm_codes.MILLIMETRE,
            ),
        ),
        finding_site=draw(st.sampled_from([None, algorithm_codes.LUNG])),
        qualifiers=draw(st.sampled_from([(), (Qualifier(support.LATERALITY, support.LEFT),)])),
    )


@st.composite
def flags(draw: st.DrawFn) -> PriorityFlag:
    when: dict[str, object] = {}
    if draw(st.booleans()):
        when["finding"] = draw(st.sampled_from([t.meaning for t in TYPES]))
    if draw(st.booleans()):
        when["min_probability"] = draw(st.floats(0.0, 1.0))
    if draw(st.booleans()):
        when["measurements"] = {"Long axis": {"min": draw(st.floats(0.0, 50.0))}}
    if draw(st.booleans()):
        when["qualifiers"] = {"Laterality": "Left"}
    return PriorityFlag.model_validate(
        {"when": when, "raise_to": draw(st.sampled_from(["stat", "urgent"]))}
    )


policies = st.dictionaries(
    st.sampled_from(["pe", "lung_nodule"]), st.lists(flags(), max_size=4), max_size=2
)
non_positive = st.one_of(
    st.just(AlgorithmResult(Verdict.ABSENT)),
    st.text(min_size=1)
    .filter(str.strip)
    .map(lambda reason: AlgorithmResult(Verdict.NOT_ASSESSED, reason=reason)),
    st.text(min_size=1).filter(str.strip).map(AlgorithmFailure),
)
algorithms = st.sampled_from([support.PE_DETECTOR, support.NODULE_DETECTOR])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(findings(), min_size=1, max_size=4),
    st.one_of(st.none(), st.floats(0.0, 1.0)),
    algorithms,
    priorities,
    st.one_of(st.none(), priorities),
    policies,
)
def test_a_decision_is_never_less_urgent_than_the_lane_or_the_order(
    found: list[Finding],
    probability: float | None,
    algorithm: AlgorithmInfo,
    lane: Priority,
    existing: Priority | None,
    policy: PriorityPolicy,
) -> None:
    result = AlgorithmResult(Verdict.PRESENT, tuple(found), probability=probability)

    decision = decide(result, algorithm=algorithm, lane=lane, existing=existing, policy=policy)

    assert decision.priority.rank <= lane.rank
    assert existing is None or decision.priority.rank <= existing.rank
    assert decision.reason.startswith("AI: ")
    assert algorithm.version in decision.reason


@settings(max_examples=300, deadline=None)
@given(non_positive, algorithms, priorities, st.one_of(st.none(), priorities), policies)
def test_a_negative_not_assessed_or_failed_outcome_never_changes_the_priority(
    outcome: Outcome,
    algorithm: AlgorithmInfo,
    lane: Priority,
    existing: Priority | None,
    policy: PriorityPolicy,
) -> None:
    decision = decide(outcome, algorithm=algorithm, lane=lane, existing=existing, policy=policy)

    assert decision.priority is most_urgent(lane, existing)
    assert not decision.flag_raised
    assert decision.status in (
        DecisionStatus.NEGATIVE,
        DecisionStatus.NOT_ASSESSED,
        DecisionStatus.FAILED,
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(findings(), min_size=1, max_size=3), findings(), algorithms, priorities, policies)
def test_one_more_finding_never_lowers_the_decision(
    found: list[Finding],
    extra: Finding,
    algorithm: AlgorithmInfo,
    lane: Priority,
    policy: PriorityPolicy,
) -> None:
    before = decide(support.positive(*found), algorithm=algorithm, lane=lane, policy=policy)
    after = decide(support.positive(*found, extra), algorithm=algorithm, lane=lane, policy=policy)

    assert after.priority.rank <= before.priority.rank
