"""Compares the current exam's lesions with a prior exam's: matching after registration, change
status (new, enlarging, stable, decreased) and tracking identifiers carried over from the prior
result."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from algorithms.contract import PriorFinding
from algorithms.ms_lesion.postprocess import Lesion, Segmentation
from algorithms.ms_lesion.registration import Registration

ENLARGING_RATIO = 1.5
"""A lesion whose volume grew by this factor (and by ENLARGING_MIN_MM3) is enlarging."""
ENLARGING_MIN_MM3 = 20.0
PRIOR_TRACE_PROBABILITY = 0.3
"""An unmatched lesion whose place had at least this prior probability is not called new (it
was there, below the reporting threshold)."""
PRIOR_TRACE_REACH_MM = 2.0
"""... within this distance in plane."""
TRACKING_PREFIX = "Lesion"
_NUMBER = re.compile(r"(\d+)\s*$")


class Change(enum.Enum):
    NEW = "new"
    ENLARGING = "enlarging"
    STABLE = "stable"
    DECREASED = "decreased"


@dataclass(frozen=True)
class TrackedLesion:
    lesion: Lesion
    tracking_id: str
    change: Change | None
    """None when there was no prior to compare with."""
    prior_volume_mm3: float | None


@dataclass(frozen=True)
class Comparison:
    tracked: tuple[TrackedLesion, ...]
    """In tracking-number order."""
    resolved: int
    """Prior lesions with no lesion at their place now."""

    def count(self, change: Change) -> int:
        return sum(1 for t in self.tracked if t.change is change)


def tracking_number(tracking_id: str) -> int | None:
    match = _NUMBER.search(tracking_id)
    return int(match.group(1)) if match else None


def without_prior(lesions: Sequence[Lesion]) -> tuple[TrackedLesion, ...]:
    """First exam: "Lesion 1" ... in the order given (largest first)."""
    return tuple(
        TrackedLesion(lesion, f"{TRACKING_PREFIX} {n}", None, None)
        for n, lesion in enumerate(lesions, start=1)
    )


def classify(current_mm3: float, prior_mm3: float) -> Change:
    if prior_mm3 <= 0.0:
        return Change.NEW
    if current_mm3 >= ENLARGING_RATIO * prior_mm3 and current_mm3 - prior_mm3 >= ENLARGING_MIN_MM3:
        return Change.ENLARGING
    if prior_mm3 >= ENLARGING_RATIO * current_mm3 and prior_mm3 - current_mm3 >= ENLARGING_MIN_MM3:
        return Change.DECREASED
    return Change.STABLE


def _grown_labels(segmentation: Segmentation) -> npt.NDArray[np.int32]:
    """The lesion label map grown by one voxel each way (a slice, a pixel): the matching
    tolerance, so lesions sampled on different slices of a thick-slice series still meet."""
    grown: npt.NDArray[np.int32] = ndimage.grey_dilation(segmentation.lesion_labels, size=(3, 3, 3))
    return grown


def _lesion_at(
    points_lps: npt.NDArray[np.float64], segmentation: Segmentation, labels: npt.NDArray[np.int32]
) -> npt.NDArray[np.int64]:
    """Index into ``segmentation.lesions`` of the lesion at each LPS point, -1 where none."""
    to_index = np.linalg.inv(segmentation.grid.affine)
    idx = np.rint((to_index @ np.hstack([points_lps, np.ones((len(points_lps), 1))]).T)[:3])
    idx = idx.astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.array(labels.shape)[:, None]), axis=0)
    out = np.full(len(points_lps), -1, dtype=np.int64)
    out[inside] = labels[idx[0, inside], idx[1, inside], idx[2, inside]].astype(np.int64) - 1
    return out


def _reach_probability(prior: Segmentation, reach_mm: float) -> npt.NDArray[np.float32]:
    """The prior's lesion probability, maximum within ``reach_mm`` in plane."""
    reach = max(1, round(reach_mm / prior.grid.spacing_mm[1]))
    size = (1, 2 * reach + 1, 2 * reach + 1)
    result: npt.NDArray[np.float32] = ndimage.maximum_filter(prior.lesion_probability, size=size)
    return result


def _prior_trace(
    lesion: Lesion,
    prior: Segmentation,
    prob: npt.NDArray[np.float32],
    registration: Registration,
) -> float:
    """Volume (mm3) of ``lesion`` whose place had prior probability ``prob`` of at least
    PRIOR_TRACE_PROBABILITY."""
    grid = prior.grid
    in_prior = registration.apply(lesion.points_lps)
    to_index = np.linalg.inv(grid.affine)
    coords = (to_index @ np.hstack([in_prior, np.ones((len(in_prior), 1))]).T)[:3]
    sampled = ndimage.map_coordinates(prob, coords, order=1, mode="constant", cval=0.0)
    hits = int((sampled >= PRIOR_TRACE_PROBABILITY).sum())
    return lesion.volume_mm3 * hits / max(len(in_prior), 1)


def compare(
    current: Segmentation,
    prior: Segmentation,
    registration: Registration,
    prior_findings: Sequence[PriorFinding] = (),
) -> Comparison:
    """Match the current lesions to the prior's (``registration`` maps current LPS to prior LPS)
    and carry the prior result's tracking identifiers over to the lesions that match them."""
    cur_lesions, prior_lesions = current.lesions, prior.lesions
    back = registration.inverse()
    cur_grown, prior_grown = _grown_labels(current), _grown_labels(prior)
    # Lesion voxels of one exam that land on (or next to) a lesion of the other, both ways.
    overlap = np.zeros((len(prior_lesions), len(cur_lesions)), dtype=np.int64)
    for c, les in enumerate(cur_lesions):
        hits = _lesion_at(registration.apply(les.points_lps), prior, prior_grown)
        overlap[:, c] += np.bincount(hits[hits >= 0], minlength=len(prior_lesions))
    for p, les in enumerate(prior_lesions):
        hits = _lesion_at(back.apply(les.points_lps), current, cur_grown)
        overlap[p] += np.bincount(hits[hits >= 0], minlength=len(cur_lesions))

    # Which prior lesion each prior finding (radrouter's earlier result) describes.
    finding_of_prior: dict[int, PriorFinding] = {}
    direct: dict[int, PriorFinding] = {}
    for finding in prior_findings:
        centre = np.array([finding.centre_lps], dtype=np.float64)
        (p,) = _lesion_at(centre, prior, prior_grown)
        if p >= 0 and int(p) not in finding_of_prior:
            finding_of_prior[int(p)] = finding
            continue
        # The earlier result saw a lesion this run misses in the prior: look for it now.
        (c,) = _lesion_at(back.apply(centre), current, cur_grown)
        if c >= 0 and int(c) not in direct:
            direct[int(c)] = finding
    numbers = [tracking_number(f.tracking_id) for f in prior_findings]
    next_number = max([n for n in numbers if n is not None], default=0) + 1
    used: set[str] = set()
    assigned: dict[int, tuple[str, Change, float]] = {}
    reach_probability: npt.NDArray[np.float32] | None = None
    # Biggest overlaps first, so a lesion that split keeps its identifier on the largest piece.
    order = sorted(range(len(cur_lesions)), key=lambda c: (-int(overlap[:, c].sum()), c))
    for c in order:
        lesion = cur_lesions[c]
        matched = [int(p) for p in np.flatnonzero(overlap[:, c])]
        prior_volume = float(sum(prior_lesions[p].volume_mm3 for p in matched))
        tracking_id = ""
        for p in sorted(matched, key=lambda p: -int(overlap[p, c])):
            described = finding_of_prior.get(p)
            if described is not None and described.tracking_id not in used:
                tracking_id = described.tracking_id
                break
        seen_before = direct.get(c)
        if seen_before is not None:
            if not tracking_id and seen_before.tracking_id not in used:
                tracking_id = seen_before.tracking_id
            if prior_volume == 0.0:
                prior_volume = seen_before.volume_mm3 or lesion.volume_mm3
        if prior_volume == 0.0:
            if reach_probability is None:
                reach_probability = _reach_probability(prior, PRIOR_TRACE_REACH_MM)
            prior_volume = _prior_trace(lesion, prior, reach_probability, registration)
        if not tracking_id:
            tracking_id = f"{TRACKING_PREFIX} {next_number}"
            next_number += 1
        used.add(tracking_id)
        assigned[c] = (tracking_id, classify(lesion.volume_mm3, prior_volume), prior_volume)

    tracked = [
        TrackedLesion(cur_lesions[c], tid, change, volume if change is not Change.NEW else 0.0)
        for c, (tid, change, volume) in assigned.items()
    ]
    tracked.sort(key=lambda t: (tracking_number(t.tracking_id) or 0, t.tracking_id))
    resolved = int((overlap.sum(axis=1) == 0).sum())
    return Comparison(tuple(tracked), resolved)
