"""Completion decisions: evidence (release + whole geometry) first, timers last."""

from __future__ import annotations

from config.schema import CompletionConfig
from router.assemble.completion import (
    CompletionReason,
    InstanceGeometry,
    MissingImages,
    SeriesState,
    StudyState,
    decide_completion,
    missing_images,
    series_is_whole,
)

AXIAL = "1.000,0.000,0.000,0.000,1.000,0.000"
CONFIG = CompletionConfig(
    settle_after_release_s=0.5, series_idle_s=10, study_idle_s=30, hard_cap_s=600
)


def stack(positions: list[float], expected: int | None = None) -> list[InstanceGeometry]:
    return [InstanceGeometry(AXIAL, p, expected, 1, None) for p in positions]


def study(
    series: list[SeriesState],
    *,
    open_: int = 0,
    released: int = 1,
    closed_at: float | None = 100.0,
    first: float = 90.0,
    last: float = 99.0,
) -> StudyState:
    return StudyState(first, last, open_, released, closed_at, series)


def test_contiguous_stack_with_matching_count_is_whole() -> None:
    assert series_is_whole(stack([float(z) for z in range(50)], expected=50))


def test_stack_missing_a_slice_is_not_whole() -> None:
    positions = [float(z) for z in range(50) if z != 20]
    assert not series_is_whole(stack(positions))
    assert not series_is_whole(stack(positions, expected=50))


def test_stack_with_fewer_slices_than_images_in_acquisition_is_not_whole() -> None:
    assert not series_is_whole(stack([float(z) for z in range(40)], expected=50))


def test_duplicate_positions_or_mixed_orientation_are_not_whole() -> None:
    assert not series_is_whole(stack([0.0, 1.0, 1.0, 2.0]))
    mixed = [
        *stack([0.0, 1.0]),
        InstanceGeometry("0.000,1.000,0.000,0.000,0.000,-1.000", 2.0, None, 1, None),
    ]
    assert not series_is_whole(mixed)


def test_multiframe_and_projection_images_are_whole() -> None:
    assert series_is_whole([InstanceGeometry(None, None, None, None, 120)])
    assert series_is_whole([InstanceGeometry(None, None, None, None, None)])


def test_released_whole_study_completes_after_settle_time() -> None:
    state = study([SeriesState(99.0, stack([float(z) for z in range(10)], 10))])
    assert decide_completion(state, CONFIG, now=100.2) is None
    assert decide_completion(state, CONFIG, now=100.6) is CompletionReason.EVIDENCE


def test_open_association_blocks_evidence_but_not_timers() -> None:
    state = study([SeriesState(99.0, stack([0.0, 1.0]))], open_=1, released=1)
    assert decide_completion(state, CONFIG, now=105.0) is None
    assert decide_completion(state, CONFIG, now=129.1) is CompletionReason.STUDY_IDLE


def test_aborted_association_is_not_evidence() -> None:
    state = study([SeriesState(99.0, stack([0.0, 1.0]))], released=0)
    assert decide_completion(state, CONFIG, now=101.0) is None


def test_incomplete_series_waits_for_series_idle_timer() -> None:
    state = study([SeriesState(99.0, stack([0.0, 1.0, 3.0]))])
    assert decide_completion(state, CONFIG, now=101.0) is None
    assert decide_completion(state, CONFIG, now=109.5) is CompletionReason.SERIES_IDLE


def test_hard_cap_wins_over_everything() -> None:
    state = study([SeriesState(689.0, stack([0.0]))], open_=1, first=90.0, last=689.0)
    assert decide_completion(state, CONFIG, now=690.0) is CompletionReason.HARD_CAP


# A series known to lack images (ImagesInAcquisition, a gap in even spacing) holds every timer
# but the hard cap; a series whose size is not known completes on the timers as before.

CORONAL = "1.000,0.000,0.000,0.000,0.000,-1.000"


def acquisition(
    positions: list[float], expected: int | None, number: int | None
) -> list[InstanceGeometry]:
    return [InstanceGeometry(AXIAL, p, expected, number, None) for p in positions]


def test_fewer_slices_than_images_in_acquisition_are_missing_images() -> None:
    missing = missing_images(stack([float(z) for z in range(40)], expected=100))
    assert missing == MissingImages(40, 100)
    assert missing.reason == "incomplete series (40 of 100 images)"
    assert missing_images(stack([float(z) for z in range(100)], expected=100)) is None


def test_a_gap_in_even_spacing_is_missing_images() -> None:
    one_gap = [float(z) for z in range(50) if z != 20]
    assert missing_images(stack(one_gap)) == MissingImages(49, 50)
    three_gone = [2.5 * z for z in range(30) if z not in (10, 11, 12)]
    assert missing_images(stack(three_gone)) == MissingImages(27, 30)


def test_multiframe_and_projection_images_have_no_missing_images() -> None:
    assert missing_images([InstanceGeometry(AXIAL, 0.0, 100, 1, 120)]) is None
    assert missing_images([InstanceGeometry(None, None, 2, 1, None)]) is None


def test_size_not_known_without_images_in_acquisition_or_gap() -> None:
    first_forty = stack([float(z) for z in range(40)])  # a cut send, but nothing to tell
    assert missing_images(first_forty) is None
    released = study([SeriesState(99.0, first_forty)])
    assert decide_completion(released, CONFIG, now=100.6) is CompletionReason.EVIDENCE
    aborted = study([SeriesState(99.0, first_forty)], released=0)
    assert decide_completion(aborted, CONFIG, now=128.5) is None
    assert decide_completion(aborted, CONFIG, now=129.5) is CompletionReason.STUDY_IDLE
    uneven = stack([0.0, 1.0, 2.0, 3.5, 4.5, 5.5])  # not whole, but no size known either
    state = study([SeriesState(99.0, uneven)])
    assert decide_completion(state, CONFIG, now=101.0) is None
    assert decide_completion(state, CONFIG, now=109.5) is CompletionReason.SERIES_IDLE


def test_missing_images_hold_series_idle_study_idle_and_an_aborted_association() -> None:
    for partial in (
        stack([float(z) for z in range(40)], expected=100),
        stack([float(z) for z in range(50) if z != 20]),
    ):
        released = study([SeriesState(99.0, partial)])
        assert decide_completion(released, CONFIG, now=109.5) is None  # series idle passed
        assert decide_completion(released, CONFIG, now=200.0) is None  # study idle passed
        aborted = study([SeriesState(99.0, partial)], released=0)
        assert decide_completion(aborted, CONFIG, now=200.0) is None
        still_open = study([SeriesState(99.0, partial)], open_=1, released=0)
        assert decide_completion(still_open, CONFIG, now=200.0) is None
        assert decide_completion(aborted, CONFIG, now=690.0) is CompletionReason.HARD_CAP


def test_one_series_lacking_images_holds_the_whole_study() -> None:
    whole = SeriesState(99.0, stack([float(z) for z in range(10)], 10))
    partial = SeriesState(99.0, stack([float(z) for z in range(40)], expected=100))
    assert decide_completion(study([whole, partial]), CONFIG, now=200.0) is None


def test_the_rest_arriving_completes_on_evidence() -> None:
    rest = stack([float(z) for z in range(100)], expected=100)
    state = study([SeriesState(150.0, rest)], closed_at=150.1, last=150.0)
    assert decide_completion(state, CONFIG, now=150.7) is CompletionReason.EVIDENCE


def test_images_in_acquisition_counted_per_series_across_acquisitions_is_whole() -> None:
    # Sequential CT numbering each rotation as an acquisition, counting the whole series.
    rotations = [
        i
        for r in range(25)
        for i in acquisition([float(4 * r + k) for k in range(4)], expected=100, number=r + 1)
    ]
    assert missing_images(rotations) is None
    assert missing_images(rotations[:40]) == MissingImages(40, 100)


def test_images_in_acquisition_counted_per_acquisition() -> None:
    first = acquisition([float(z) for z in range(100)], expected=100, number=1)
    second = acquisition([float(z) for z in range(100)], expected=100, number=2)
    assert missing_images(first + second) is None
    assert missing_images(first + second[:40]) == MissingImages(140, 200)
    per_rotation = [
        i for r in range(10) for i in acquisition([4.0 * r + k for k in range(4)], 4, r + 1)
    ]
    assert missing_images(per_rotation) is None
    assert missing_images(per_rotation[:-1]) == MissingImages(39, 40)


def test_localizer_in_the_series_is_not_missing_images() -> None:
    slices = stack([float(z) for z in range(100)], expected=100)
    own_acquisition = InstanceGeometry(CORONAL, 0.0, 1, 9, None)
    uncounted = InstanceGeometry(CORONAL, 0.0, 100, 1, None)  # same acquisition, not counted
    counted = InstanceGeometry(CORONAL, 0.0, 101, 1, None)
    counted_slices = [InstanceGeometry(AXIAL, float(z), 101, 1, None) for z in range(100)]
    assert missing_images([own_acquisition, *slices]) is None
    assert missing_images([uncounted, *slices]) is None
    assert missing_images([counted, *counted_slices]) is None
    no_count = [InstanceGeometry(CORONAL, 0.0, None, 2, None), *stack([0.0, 1.0, 2.0, 3.0])]
    assert missing_images(no_count) is None


def test_irregular_but_valid_spacing_is_not_missing_images() -> None:
    helical = [0.0, 1.0, 2.2, 3.2, 4.4, 5.4, 6.6]  # steps 1.0 and 1.2: within tolerance
    assert missing_images(stack(helical)) is None
    uneven = [0.0, 1.0, 2.0, 3.5, 4.5, 5.5]  # a 1.5 step is no whole number of slices
    assert missing_images(stack(uneven)) is None
    every_other_gap = [0.0, 1.0, 3.0, 4.0, 6.0]  # as many gaps as steps: no even spacing
    assert missing_images(stack(every_other_gap)) is None
    assert missing_images(stack([0.0, 1.0, 3.0])) is None  # too few to tell


def test_images_in_acquisition_that_disagree_within_an_acquisition_give_no_count() -> None:
    slices = [InstanceGeometry(AXIAL, float(z), 100 if z % 2 else 50, 1, None) for z in range(40)]
    assert missing_images(slices) is None


def test_repeated_positions_are_judged_per_acquisition() -> None:
    phases = [i for n in range(3) for i in acquisition([float(z) for z in range(10)], None, n)]
    assert missing_images(phases) is None
    with_gap = phases[:25] + phases[26:]  # phase 2 lost its slice at z = 5
    assert missing_images(with_gap) == MissingImages(29, 30)
