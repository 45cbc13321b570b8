"""Completion decisions: evidence (release + whole geometry) first, timers last."""

from __future__ import annotations

from config.schema import CompletionConfig
from router.assemble.completion import (
    CompletionReason,
    InstanceGeometry,
    SeriesState,
    StudyState,
    decide_completion,
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
