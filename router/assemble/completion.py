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
class MissingImages:
    """A series that visibly lacks images: ``held`` of the ``expected`` ones are here."""

    held: int
    expected: int

    @property
    def reason(self) -> str:
        """The "not assessed" reason a job on this series states."""
        return f"incomplete series ({self.held} of {self.expected} images)"


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


def missing_images(instances: Sequence[InstanceGeometry]) -> MissingImages | None:
    """The images a series visibly lacks, or None when its size is not known or it is whole.

    Only slices count (single-frame images with an orientation and a position): a multi-frame
    object is whole by itself and a projection image (no patient geometry) is one per instance,
    so neither has an expected size. The expected size is known in two ways:

    1. **ImagesInAcquisition.** Slices are grouped by AcquisitionNumber; a group declares its
       size when all its slices carry the same positive value. The value is read two ways, per
       acquisition (each group should hold that many) and, when every group declares one and
       the same value, per series (the whole series should). A reading that the slices
       contradict (more slices than it allows) is dropped. The series lacks images only when
       every reading left says so; when one says it is whole (a scanner that counts per series
       and numbers each rotation as an acquisition), it is whole. Instances of the acquisition
       in another orientation (a localizer in the series) are counted too, since the scanner
       counts them; when it does not, the reading is contradicted and dropped.
    2. **A gap in even spacing**, when ImagesInAcquisition gives no reading: the slices of the
       main orientation (the most common; a localizer's is another), per acquisition when
       positions repeat across acquisitions, are sorted; every step must be within
       ``SPACING_TOLERANCE`` of the median step (at least two such steps, and more of them
       than gaps) or of a whole multiple of it: each such multiple ``k`` is ``k - 1`` missing
       slices. One step that is neither (irregular but valid spacing, overlapping ranges)
       leaves the size unknown.

    A series missing its last slices with no ImagesInAcquisition looks whole and is not caught.
    """
    slices = [
        i
        for i in instances
        if i.orientation is not None
        and i.slice_position is not None
        and (i.number_of_frames or 1) <= 1
    ]
    if not slices:
        return None
    counted = _count_against_images_in_acquisition(slices)
    if counted is not None:
        return counted if counted.held < counted.expected else None
    return _gaps_in_spacing(slices)


def _count_against_images_in_acquisition(
    slices: Sequence[InstanceGeometry],
) -> MissingImages | None:
    """What ImagesInAcquisition says (see :func:`missing_images`): images missing, the series
    whole (``held == expected``), or None when it gives no reading."""
    groups: dict[int | None, list[InstanceGeometry]] = {}
    for i in slices:
        groups.setdefault(i.acquisition_number, []).append(i)
    declared: dict[int | None, int] = {}
    for number, members in groups.items():
        values = {m.images_in_acquisition for m in members}
        value = values.pop() if len(values) == 1 else None
        if value is not None and value > 0:
            declared[number] = value
    readings: list[MissingImages] = []
    if declared and all(len(groups[n]) <= size for n, size in declared.items()):
        readings.append(
            MissingImages(sum(len(groups[n]) for n in declared), sum(declared.values()))
        )
    if len(declared) == len(groups) and len(set(declared.values())) == 1:
        size = next(iter(declared.values()))
        if len(slices) <= size:
            readings.append(MissingImages(len(slices), size))
    if not readings:
        return None
    if any(r.held >= r.expected for r in readings):
        return MissingImages(len(slices), len(slices))
    return min(readings, key=lambda r: r.expected)


def _gaps_in_spacing(slices: Sequence[InstanceGeometry]) -> MissingImages | None:
    """Slices missing from gaps in otherwise even spacing (see :func:`missing_images`)."""
    orientation = Counter(i.orientation for i in slices).most_common(1)[0][0]
    stack = [i for i in slices if i.orientation == orientation]
    positions = [i.slice_position for i in stack if i.slice_position is not None]
    if len(set(positions)) == len(positions):
        runs = [positions]
    else:
        by_acquisition: dict[int | None, list[float]] = {}
        for i in stack:
            if i.slice_position is not None:
                by_acquisition.setdefault(i.acquisition_number, []).append(i.slice_position)
        runs = list(by_acquisition.values())
        if any(len(set(run)) != len(run) for run in runs):
            return None
    missing = 0
    for run in runs:
        if len(run) < 3:
            continue
        steps = np.diff(np.sort(np.array(run, dtype=np.float64)))
        median = float(np.median(steps))
        if np.any(steps <= 1e-3) or median <= 1e-3:
            return None
        multiples = np.rint(steps / median)
        near = np.abs(steps - multiples * median) <= SPACING_TOLERANCE * median
        regular = near & (multiples == 1)
        gaps = near & (multiples >= 2)
        if not np.all(regular | gaps):
            return None  # irregular spacing: the expected size is not known
        if np.any(gaps) and (regular.sum() < 2 or regular.sum() <= gaps.sum()):
            return None
        missing += int((multiples[gaps] - 1).sum())
    if not missing:
        return None
    return MissingImages(len(positions), len(positions) + missing)


def decide_completion(
    study: StudyState, config: CompletionConfig, now: float
) -> CompletionReason | None:
    """The reason the study is complete now, or None to keep waiting."""
    if now - study.first_received_at >= config.hard_cap_s:
        return CompletionReason.HARD_CAP
    # A series known to lack images blocks every timer but the hard cap: a sender whose
    # association was cut resends the rest later, and a partial volume must not be processed.
    if any(missing_images(s.instances) is not None for s in study.series):
        return None
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
