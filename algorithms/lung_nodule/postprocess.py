"""Turns a model-grid probability map into nodule detections on the input grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from algorithms.lung_nodule.preprocess import MODEL_SPACING_MM, ModelGrid

VOXEL_THRESHOLD = 0.5
"""Model-grid voxels above this probability form candidate components (and the masks)."""
PROBABILITY_THRESHOLD = 0.5
"""A candidate is reported when its peak probability reaches this."""
MIN_COMPONENT_VOXELS = 2
"""Smaller components (at 1.5 mm, 2 voxels ~ 7 mm^3) are noise."""
MASK_PEAK_FRACTION = 0.6
"""A faint component (peak < VOXEL_THRESHOLD / this) is outlined at this fraction of its peak."""
MAX_FINDINGS = 10
POLYGON_POINTS = 32

BoolVolume = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Detection:
    """One nodule on the input grid."""

    probability: float
    centre_voxel: tuple[float, float, float]
    mask: BoolVolume
    long_axis_mm: float
    volume_mm3: float
    slice_index: int
    outline: tuple[tuple[float, float], ...]
    """Closed (column, row) polygon on ``slice_index``."""


def _component_mask(
    prob: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int32],
    label: int,
    box: tuple[slice, slice, slice],
    grid: ModelGrid,
    input_shape: tuple[int, int, int],
    threshold: float = VOXEL_THRESHOLD,
) -> tuple[BoolVolume, tuple[slice, slice, slice]] | None:
    """The component's probability interpolated onto the input voxels it covers, thresholded."""
    lo_m = np.array([b.start for b in box], dtype=np.float64) - 1.0
    hi_m = np.array([b.stop for b in box], dtype=np.float64)
    lo_in = np.floor(grid.to_input(lo_m)).astype(int)
    hi_in = np.ceil(grid.to_input(hi_m)).astype(int) + 1
    lo_in = np.clip(lo_in, 0, np.array(input_shape))
    hi_in = np.clip(hi_in, 0, np.array(input_shape))
    if np.any(hi_in <= lo_in):
        return None
    in_box = (
        slice(int(lo_in[0]), int(hi_in[0])),
        slice(int(lo_in[1]), int(hi_in[1])),
        slice(int(lo_in[2]), int(hi_in[2])),
    )
    # The component alone (neighbours must not bleed in), cropped with a one-voxel border.
    lo_c = [max(0, b.start - 1) for b in box]
    crop = tuple(slice(lo, b.stop + 1) for lo, b in zip(lo_c, box, strict=True))
    own = np.where(labels[crop] == label, prob[crop], np.float32(0.0))
    axes = [
        (np.arange(s.start, s.stop, dtype=np.float64) - grid.origin[a]) / grid.step[a] - lo_c[a]
        for a, s in enumerate(in_box)
    ]
    coords = np.meshgrid(*axes, indexing="ij")
    sampled = ndimage.map_coordinates(own, coords, order=1, mode="constant", cval=0.0)
    return sampled >= threshold, in_box


def _ball(
    centre: tuple[float, float, float],
    radius_mm: float,
    spacing: tuple[float, float, float],
    shape: tuple[int, int, int],
) -> BoolVolume:
    """A ball on the input grid (at least the voxel nearest the centre)."""
    result = np.zeros(shape, dtype=bool)
    box = []
    for c, s, n in zip(centre, spacing, shape, strict=True):
        lo = int(np.clip(math.floor(c - radius_mm / s), 0, n - 1))
        hi = int(np.clip(math.ceil(c + radius_mm / s) + 1, lo + 1, n))
        box.append(slice(lo, hi))
    idx = np.ogrid[box[0], box[1], box[2]]
    dist2 = sum(((i - c) * s) ** 2 for i, c, s in zip(idx, centre, spacing, strict=True))
    result[box[0], box[1], box[2]] = np.asarray(dist2) <= radius_mm**2
    nearest = tuple(int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre, shape, strict=True))
    result[nearest] = True
    return result


def long_axis_mm(mask: BoolVolume, spacing: tuple[float, float, float]) -> float:
    """Longest in-plane extent over all slices (between outer pixel edges)."""
    best = 0.0
    dy, dx = spacing[1], spacing[2]
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        plane = mask[k]
        edge = plane & ~ndimage.binary_erosion(plane)
        pts = np.argwhere(edge).astype(np.float64) * np.array([dy, dx])
        if len(pts) > 400:
            pts = pts[np.linspace(0, len(pts) - 1, 400).astype(int)]
        diff = pts[:, None, :] - pts[None, :, :]
        best = max(best, float(np.sqrt((diff**2).sum(-1)).max()))
    return best + (dy + dx) / 2


def outline(
    plane: BoolVolume | None, centre_rc: tuple[float, float], radius_px: tuple[float, float]
) -> tuple[tuple[float, float], ...]:
    """Closed (column, row) polygon: the mask's radial extent on 32 rays from the centre, or an
    ellipse of ``radius_px`` (row, column radii) when the plane has no mask there."""
    ci, cj = centre_rc
    angles = [2.0 * math.pi * n / POLYGON_POINTS for n in range(POLYGON_POINTS)]
    pts: list[tuple[float, float]]
    radii = np.empty(POLYGON_POINTS)
    if plane is not None and plane.any():
        ys, xs = np.nonzero(plane)
        ci, cj = float(ys.mean()), float(xs.mean())
        steps = np.arange(0.0, max(plane.shape), 0.25)
        for n, a in enumerate(angles):
            rows = np.rint(ci + steps * math.sin(a)).astype(int)
            cols = np.rint(cj + steps * math.cos(a)).astype(int)
            ok = (rows >= 0) & (rows < plane.shape[0]) & (cols >= 0) & (cols < plane.shape[1])
            inside = np.zeros(len(steps), dtype=bool)
            inside[ok] = plane[rows[ok], cols[ok]]
            first_out = int(np.argmin(inside)) if not inside.all() else len(steps)
            radii[n] = steps[max(first_out - 1, 0)] + 0.5
        pts = [
            (cj + float(r) * math.cos(a), ci + float(r) * math.sin(a))
            for r, a in zip(radii, angles, strict=True)
        ]
    else:
        ri, rj = radius_px
        pts = [(cj + rj * math.cos(float(a)), ci + ri * math.sin(float(a))) for a in angles]
    rounded = tuple((round(c, 2), round(r, 2)) for c, r in pts)
    return (*rounded, rounded[0])


@dataclass(frozen=True)
class Candidate:
    """One connected component of the stage-1 probability map (model grid)."""

    label: int
    """Its label in the component label volume."""
    peak: float
    """Highest stage-1 voxel probability in the component."""
    centre: tuple[float, float, float]
    """Probability-weighted centre (model-grid k, i, j) of its voxels at >= half the peak."""
    voxels: int
    box: tuple[slice, slice, slice]


def find_candidates(
    prob: npt.NDArray[np.float32],
    allowed: BoolVolume | None = None,
    voxel_threshold: float = VOXEL_THRESHOLD,
    min_voxels: int = MIN_COMPONENT_VOXELS,
) -> tuple[npt.NDArray[np.int32], list[Candidate]]:
    """Connected components of ``prob >= voxel_threshold``, strongest peak first.

    Components smaller than ``min_voxels`` and, when ``allowed`` (model grid) is given, those
    that do not touch it (e.g. outside the lungs) are dropped. Returns the label volume too.
    """
    labels, n = ndimage.label(prob >= voxel_threshold)
    labels = labels.astype(np.int32, copy=False)
    if n == 0:
        return labels, []
    index = np.arange(1, n + 1)
    peaks = np.asarray(ndimage.maximum(prob, labels, index), dtype=np.float64)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = sizes >= min_voxels
    if allowed is not None:
        keep &= np.bincount(labels[allowed].ravel(), minlength=n + 1)[1:] > 0
    order = [int(i) for i in index[keep][np.argsort(-peaks[keep], kind="stable")]]
    boxes = ndimage.find_objects(labels)
    found: list[Candidate] = []
    for label in order:
        box = boxes[label - 1]
        assert box is not None
        peak = float(peaks[label - 1])
        local = prob[box]
        weight = np.where((labels[box] == label) & (local >= 0.5 * peak), local, 0.0)
        offset = np.array([b.start for b in box], dtype=np.float64)
        centre = np.array(ndimage.center_of_mass(weight)) + offset
        found.append(
            Candidate(
                label=label,
                peak=peak,
                centre=(float(centre[0]), float(centre[1]), float(centre[2])),
                voxels=int(sizes[label - 1]),
                box=box,
            )
        )
    return labels, found


def suppress_duplicates(
    candidates: list[Candidate], scores: list[float], min_distance_mm: float = 5.0
) -> list[int]:
    """Indices of the candidates to keep, best score first: a candidate whose centre lies within
    max(``min_distance_mm``, equivalent radius) of a better-scoring kept one is dropped (one
    nodule whose probability map fell apart into pieces is reported once)."""
    order = sorted(range(len(candidates)), key=lambda n: -scores[n])
    kept: list[int] = []
    for n in order:
        c = np.array(candidates[n].centre)
        duplicate = False
        for m in kept:
            radius_mm = (3.0 * candidates[m].voxels / (4.0 * math.pi)) ** (1 / 3) * MODEL_SPACING_MM
            gap = float(np.linalg.norm(c - np.array(candidates[m].centre))) * MODEL_SPACING_MM
            if gap < max(min_distance_mm, radius_mm):
                duplicate = True
                break
        if not duplicate:
            kept.append(n)
    return kept


def measure(
    prob: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int32],
    candidate: Candidate,
    probability: float,
    grid: ModelGrid,
    input_shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> Detection:
    """The candidate on the input grid: mask, long axis, volume and outline.

    The mask is the component's probability interpolated onto the input voxels and thresholded
    at ``VOXEL_THRESHOLD``, or at ``MASK_PEAK_FRACTION`` of the peak when that is lower (faint
    candidates that only stage 2 vouches for).
    """
    c = grid.to_input(np.array(candidate.centre))
    centre = (float(c[0]), float(c[1]), float(c[2]))
    mask = np.zeros(input_shape, dtype=bool)
    threshold = min(VOXEL_THRESHOLD, MASK_PEAK_FRACTION * candidate.peak)
    local = _component_mask(
        prob, labels, candidate.label, candidate.box, grid, input_shape, threshold
    )
    if local is not None and local[0].any():
        mask[local[1]] = local[0]
    else:
        volume = float(candidate.voxels) * MODEL_SPACING_MM**3
        radius_mm = max((3.0 * volume / (4.0 * math.pi)) ** (1 / 3), min(spacing))
        mask = _ball(centre, radius_mm, spacing, input_shape)
    k = int(np.clip(round(centre[0]), 0, input_shape[0] - 1))
    plane = mask[k] if mask[k].any() else None
    length = long_axis_mm(mask, spacing)
    radius_px = (length / 2 / spacing[1], length / 2 / spacing[2])
    return Detection(
        probability=float(np.clip(probability, 0.0, 1.0)),
        centre_voxel=centre,
        mask=mask,
        long_axis_mm=length,
        volume_mm3=float(mask.sum()) * float(np.prod(spacing)),
        slice_index=k,
        outline=outline(plane, (centre[1], centre[2]), radius_px),
    )


def detect(
    prob: npt.NDArray[np.float32],
    grid: ModelGrid,
    input_shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    allowed: BoolVolume | None = None,
    probability_threshold: float = PROBABILITY_THRESHOLD,
    max_findings: int = MAX_FINDINGS,
) -> list[Detection]:
    """Stage 1 alone: components of ``prob`` whose peak reaches ``probability_threshold``,
    strongest first, measured on the input grid (the peak is the reported probability).

    ``allowed`` (model grid) drops components that do not touch it (e.g. outside the lungs).
    """
    labels, candidates = find_candidates(prob, allowed)
    found = [c for c in candidates if c.peak >= probability_threshold][:max_findings]
    return [measure(prob, labels, c, c.peak, grid, input_shape, spacing) for c in found]


MIDLINE_MARGIN_MM = 10.0
"""A nodule this close to the midline (between the lungs) is given no side."""


def side_of(
    centre_voxel: tuple[float, float, float],
    lung_columns: slice,
    affine: npt.NDArray[np.float64],
) -> str | None:
    """ "right" or "left" (the patient's) of a nodule, from where its centre lies against the
    midline between the lungs (the middle of the lungs' bounding box across the image); None
    within ``MIDLINE_MARGIN_MM`` of it. Patient LPS: +x is the patient's left."""
    k, i, j = centre_voxel
    middle = (lung_columns.start + lung_columns.stop - 1) / 2.0
    nodule_x = float((affine @ np.array([k, i, j, 1.0]))[0])
    midline_x = float((affine @ np.array([k, i, middle, 1.0]))[0])
    offset = nodule_x - midline_x
    if abs(offset) < MIDLINE_MARGIN_MM:
        return None
    return "left" if offset > 0 else "right"
