"""Deciding when a study is complete: evidence first (release + whole geometry), timers last."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from config.schema import CompletionConfig

SPACING_TOLERANCE = 0.25
"""Largest relative deviation of a slice step from the median step in a whole series."""


class CompletionReason(enum.StrEnum):
    EVIDENCE = "association released and every series geometrically whole"
    SERIES_IDLE = "association released and every series whole or idle"
    STUDY_IDLE = "study idle timer"
    HARD_CAP = "hard cap since first instance"


@dataclass(frozen=True)
class InstanceGeometry:
    orientation: str | None
    slice_position: float | None
    images_in_acquisition: int | None
    acquisition_number: int | None
    number_of_frames: int | None


@dataclass(frozen=True)
class SeriesState:
    last_received_at: float
    instances: Sequence[InstanceGeometry]


@dataclass(frozen=True)
class StudyState:
    first_received_at: float
    last_received_at: float
    open_associations: int
    released_associations: int
    last_closed_at: float | None
    series: Sequence[SeriesState]


def series_is_whole(instances: Sequence[InstanceGeometry]) -> bool:
    """True when the instances we hold plainly make up the whole series.

    - one multi-frame object carries all its frames;
    - a projection image (no patient geometry) is whole by itself, one per instance;
    - a stack of slices is whole when it has one orientation, distinct positions with even
      spacing, and, where ImagesInAcquisition is present, that many slices per acquisition.
    """
    if not instances:
        return False
    if len(instances) == 1 and (instances[0].number_of_frames or 1) > 1:
        return True
    with_geometry = [i for i in instances if i.slice_position is not None]
    if not with_geometry:
        return True
    if len(with_geometry) != len(instances):
        return False
    if len({i.orientation for i in instances}) != 1:
        return False
    expected = [i.images_in_acquisition for i in instances if i.images_in_acquisition]
    if expected:
        per_acquisition = Counter(i.acquisition_number for i in instances)
        if len(per_acquisition) == 1:
            if len(instances) != expected[0]:
                return False
        elif any(count != expected[0] for count in per_acquisition.values()):
            return False
    positions = np.sort(np.array([i.slice_position for i in with_geometry], dtype=np.float64))
    if len(positions) < 2:
        return True
    steps = np.diff(positions)
    if np.any(steps <= 1e-3):
        return False
    median = float(np.median(steps))
    return bool(np.all(np.abs(steps - median) <= SPACING_TOLERANCE * median))


def decide_completion(
    study: StudyState, config: CompletionConfig, now: float
) -> CompletionReason | None:
    """The reason the study is complete now, or None to keep waiting."""
    if now - study.first_received_at >= config.hard_cap_s:
        return CompletionReason.HARD_CAP
    if now - study.last_received_at >= config.study_idle_s:
        return CompletionReason.STUDY_IDLE
    if study.open_associations > 0 or study.released_associations == 0:
        return None
    settled_since = max(study.last_received_at, study.last_closed_at or study.last_received_at)
    if now - settled_since < config.settle_after_release_s:
        return None
    whole = [series_is_whole(s.instances) for s in study.series]
    if all(whole):
        return CompletionReason.EVIDENCE
    if all(
        is_whole or now - s.last_received_at >= config.series_idle_s
        for is_whole, s in zip(whole, study.series, strict=True)
    ):
        return CompletionReason.SERIES_IDLE
    return None
