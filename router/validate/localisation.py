"""Localisation: where the truth file says the target is, whether the algorithm's findings are
there, and the figures of it (localisation sensitivity, false-positive findings per case).

A truth location is one or more points in the study's patient coordinates, millimetres, LPS
(DICOM's: x to the patient's left, y to the back, z to the head), as a viewer shows them. A
finding is *at* a truth point when its mask or its outline (the polygon on its slice) holds
the point, or when its centre lies within ``hit_mm`` of it. A truth point is found when a
finding is at it; a finding at no truth point of its case is a false positive.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from algorithms.contract import Finding, VolumeGeometry

if TYPE_CHECKING:
    from router.validate.run import CaseOutcome

Point = tuple[float, float, float]

DEFAULT_HIT_MM = 10.0
"""A finding whose centre is this close to a truth point is at it (``--hit-mm``)."""


class LocationSyntaxError(ValueError):
    """A truth location that is not ``x y z`` points; the message says what is wrong."""


def parse_location(text: str) -> tuple[Point, ...]:
    """``"x y z"`` (or ``"x,y,z"``, quoted in CSV), several points separated by ``;``; ``""``
    is no location."""
    points: list[Point] = []
    if not text.strip():
        return ()
    for part in text.split(";"):
        fields = part.replace(",", " ").split()
        if len(fields) != 3:
            raise LocationSyntaxError(
                f"location {part.strip()!r} is not three coordinates x y z (mm, LPS)"
            )
        try:
            values = tuple(float(f) for f in fields)
        except ValueError:
            raise LocationSyntaxError(
                f"location {part.strip()!r} has a coordinate that is not a number"
            ) from None
        if not all(math.isfinite(v) for v in values):
            raise LocationSyntaxError(
                f"location {part.strip()!r} has a coordinate that is not finite"
            )
        points.append((values[0], values[1], values[2]))
    return tuple(points)


@dataclass(frozen=True)
class FindingPlace:
    """One finding of a case's result, against the case's truth points."""

    probability: float
    centre_lps: Point
    distances_mm: tuple[float, ...]
    """From the finding's centre to each truth point."""
    contains: tuple[bool, ...]
    """Whether the finding's mask or outline holds each truth point."""

    def at(self, hit_mm: float) -> tuple[bool, ...]:
        """Whether the finding is at each truth point (the hit rule)."""
        return tuple(
            inside or distance <= hit_mm
            for inside, distance in zip(self.contains, self.distances_mm, strict=True)
        )

    @property
    def nearest_mm(self) -> float | None:
        return min(self.distances_mm, default=None)


def place_findings(
    findings: Iterable[Finding], geometry: VolumeGeometry, points: Sequence[Point]
) -> tuple[FindingPlace, ...]:
    """The findings of a result, in patient coordinates, against the truth ``points``."""
    try:
        inverse: npt.NDArray[np.float64] | None = np.linalg.inv(geometry.affine).astype(np.float64)
    except np.linalg.LinAlgError:  # a degenerate grid: only the centre distance counts
        inverse = None
    places = []
    for finding in findings:
        centre = geometry.to_lps(finding.centre_voxel)
        places.append(
            FindingPlace(
                probability=float(finding.probability),
                centre_lps=centre,
                distances_mm=tuple(math.dist(centre, point) for point in points),
                contains=tuple(
                    inverse is not None and _holds(finding, inverse, geometry, point)
                    for point in points
                ),
            )
        )
    return tuple(places)


def _holds(
    finding: Finding,
    inverse: npt.NDArray[np.float64],
    geometry: VolumeGeometry,
    point: Point,
) -> bool:
    """The voxel of ``point`` is in the finding's mask, or the point lies on the finding's
    slice (within half a slice) inside its outline."""
    k, i, j, _ = inverse @ np.array([point[0], point[1], point[2], 1.0])
    if finding.mask is not None and tuple(finding.mask.shape) == tuple(geometry.shape):
        voxel = (round(float(k)), round(float(i)), round(float(j)))
        if all(0 <= v < n for v, n in zip(voxel, geometry.shape, strict=True)) and bool(
            finding.mask[voxel]
        ):
            return True
    if abs(float(k) - finding.region.slice_index) > 0.5:
        return False
    # The outline is in DICOM SCOORD pixel coordinates: (0, 0) is the top left corner of the
    # top left pixel, so the centre of pixel (row i, column j) is (j + 0.5, i + 0.5).
    return _in_polygon(float(j) + 0.5, float(i) + 0.5, finding.region.points)


def _in_polygon(x: float, y: float, points: Sequence[tuple[float, float]]) -> bool:
    """Even-odd rule; a point on an edge counts as inside."""
    inside = False
    for (x1, y1), (x2, y2) in itertools.pairwise(points):
        cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
        if cross == 0 and min(x1, x2) <= x <= max(x1, x2) and min(y1, y2) <= y <= max(y1, y2):
            return True
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def figures(cases: Sequence[CaseOutcome], hit_mm: float) -> dict[str, Any] | None:
    """Localisation figures of the assessed ``cases`` at the operating point; None when no
    positive case has a truth location.

    Positive cases with a location: found at the right place when a finding is at one of its
    points (``localised``), and their points found (``lesions_found``). False-positive
    findings are counted on the cases where every finding can be judged: the negatives, and
    the positives with a location (a positive without one is left out of that count).
    """
    assessed = [c for c in cases if c.assessed]
    located = [c for c in assessed if c.truth.positive and c.truth.locations]
    if not located:
        return None
    judged = [c for c in assessed if not c.truth.positive or c.truth.locations]
    rows = []
    localised = lesions = lesions_found = false_positives = wrong_place = 0
    for case in judged:
        at = [place.at(hit_mm) for place in case.findings]
        found = [any(hits[n] for hits in at) for n in range(len(case.truth.locations))]
        wrong = [place for place, hits in zip(case.findings, at, strict=True) if not any(hits)]
        false_positives += len(wrong)
        if case.truth.positive:
            lesions += len(found)
            lesions_found += sum(found)
            localised += any(found)
            wrong_place += bool(case.findings) and not any(found)
        if case.truth.positive or case.findings:
            rows.append(
                {
                    "study_uid": case.study_uid,
                    "scanner": case.scanner,
                    "truth": "positive" if case.truth.positive else "negative",
                    "locations": [list(point) for point in case.truth.locations],
                    "verdict": case.verdict.value if case.verdict is not None else None,
                    "found": found,
                    "findings": [
                        {
                            "probability": place.probability,
                            "centre_lps": [round(v, 2) for v in place.centre_lps],
                            "nearest_mm": (
                                None if place.nearest_mm is None else round(place.nearest_mm, 2)
                            ),
                            "at_truth": any(hits),
                        }
                        for place, hits in zip(case.findings, at, strict=True)
                    ],
                }
            )
    return {
        "hit_mm": hit_mm,
        "positives_with_location": len(located),
        "localised": localised,
        "sensitivity": localised / len(located),
        "positives_found_elsewhere": wrong_place,
        "lesions": lesions,
        "lesions_found": lesions_found,
        "lesion_sensitivity": lesions_found / lesions,
        "cases_judged": len(judged),
        "false_positive_findings": false_positives,
        "false_positives_per_case": false_positives / len(judged),
        "cases": rows,
    }
