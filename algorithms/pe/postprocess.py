"""Turns the model's embolus, artery and trunk maps into a contrast check, calibrated embolus
probabilities and located emboli (level, side, mask, outline) on the input grid."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from algorithms.pe.preprocess import MODEL_SPACING_MM, ModelGrid

Level = Literal["central", "lobar", "segmental"]
Side = Literal["right", "left", "both"]

CLOT, ARTERY, TRUNK = range(3)
"""Output channels of the model."""
VOXEL_THRESHOLD = 0.5
"""Model-grid voxels at or above this form candidate embolus components."""
MASS_FLOOR_ML = 0.01
"""Added to a component's probability mass before the logarithm of the calibration."""
MIN_TRUNK_ML = 3.0
"""Smallest pulmonary trunk (largest trunk component) accepted as found."""
MIN_TRUNK_HU = 90.0
"""Median HU of the trunk lumen below which the pulmonary arteries count as unenhanced."""
ARTERY_ZONE_DILATION = 2
"""Model voxels by which the predicted arteries are grown to form the zone emboli must touch."""
CENTRAL_RADIUS_MM = 9.5
LOBAR_RADIUS_MM = 4.75
"""Level from the lumen radius at the embolus (largest distance to the artery wall in the
predicted lumen, which the 2 mm grid widens by about 1 mm): main arteries are 14-24 mm wide,
lobar arteries 8-16 mm, segmental ones narrower; the ranges overlap, so a radius alone calls
only the clearly wide (central) and clearly narrow (segmental) arteries."""
NEAR_BIFURCATION_MM = 7.0
"""An embolus reaching within this distance (patient x) of the bifurcation lies in a main
artery or the trunk: central, whatever its radius. Lobar arteries leave the main arteries at
least 10 mm out (the left main artery is short, so its lobar clots are the close ones)."""
BIFURCATION_FRACTION = 0.25
"""The top quarter of the trunk (towards the head) stands for the bifurcation."""
SADDLE_RIGHT_MM = 10.0
SADDLE_LEFT_MM = 4.5
"""A central embolus reaching at least this far right and this far left of the bifurcation
(patient x) straddles it: a saddle embolus, called bilateral. The left main artery climbs
before it turns left, so a saddle embolus reaches less far left than right."""
MAX_FINDINGS = 8
POLYGON_POINTS = 32

BoolVolume = npt.NDArray[np.bool_]
FloatVolume = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Calibration:
    """Probability that a candidate component is an embolus, from its probability mass (the
    sum of its voxels' embolus probabilities, in mL): ``sigmoid(intercept + slope *
    ln(mass_ml + MASS_FLOOR_ML))``, fitted on the validation split (Platt scaling).

    The network's voxel probabilities saturate at 1.0 on true and false candidates alike, so
    their peak cannot rank or threshold findings; the mass grows with how much of an artery
    the network is sure is occluded, and ranks studies as well as the peak does."""

    intercept: float
    slope: float

    def probability(self, mass_ml: float) -> float:
        z = self.intercept + self.slope * math.log(max(mass_ml, 0.0) + MASS_FLOOR_ML)
        return float(1.0 / (1.0 + math.exp(-min(max(z, -50.0), 50.0))))


def fit_calibration(
    masses_ml: npt.ArrayLike, is_embolus: npt.ArrayLike, ridge: float = 1e-3
) -> Calibration:
    """Logistic regression of ``is_embolus`` on ln(mass + floor) (Newton's method, with a
    small ridge so that separable data still gives finite weights)."""
    x = np.log(np.asarray(masses_ml, dtype=np.float64) + MASS_FLOOR_ML)
    y = np.asarray(is_embolus, dtype=np.float64)
    if x.shape != y.shape or len(x) < 2 or y.min() == y.max():
        raise ValueError("calibration needs candidates that are emboli and ones that are not")
    design = np.stack([np.ones_like(x), x], axis=1)
    w = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -50.0, 50.0)))
        gradient = design.T @ (p - y) + ridge * w
        hessian = (design * (p * (1.0 - p))[:, None]).T @ design + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    return Calibration(intercept=float(w[0]), slope=float(w[1]))


@dataclass(frozen=True)
class Trunk:
    """The located pulmonary trunk and the enhancement of its lumen."""

    mask: BoolVolume
    """Model grid."""
    volume_ml: float
    median_hu: float
    bifurcation_x_lps: float
    """Patient x (LPS, + = left) of the top of the trunk, where it divides."""
    bifurcation_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Patient position (LPS) of the middle of the trunk's top quarter."""


@dataclass(frozen=True)
class Embolus:
    """One suspected embolus on the input grid."""

    probability: float
    """Calibrated (``Calibration``), or the peak voxel probability when there is none."""
    peak: float
    """Highest voxel embolus probability in the component."""
    mass_ml: float
    """Sum of the component's voxel embolus probabilities times the voxel volume."""
    centre_voxel: tuple[float, float, float]
    level: Level
    in_trunk: bool
    """Mostly inside the predicted pulmonary trunk."""
    side: Side | None
    """None for a central embolus confined to the trunk."""
    radius_mm: float
    """Lumen radius of the artery at the embolus."""
    mask: BoolVolume
    volume_mm3: float
    slice_index: int
    outline: tuple[tuple[float, float], ...]


def _to_lps(
    model_index: npt.NDArray[np.float64], grid: ModelGrid, affine: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Patient LPS positions (n, 3) of (n, 3) model-grid indices."""
    idx = grid.to_input(model_index)
    lps: npt.NDArray[np.float64] = idx @ affine[:3, :3].T + affine[:3, 3]
    return lps


def locate_trunk(
    prob: FloatVolume, model_hu: FloatVolume, grid: ModelGrid, affine: npt.NDArray[np.float64]
) -> Trunk | None:
    """The largest trunk component, its lumen HU (eroded, emboli excluded) and the x of its
    top; None if there is no trunk of at least ``MIN_TRUNK_ML``."""
    labels, n = ndimage.label(prob[TRUNK] >= 0.5)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    biggest = int(np.argmax(sizes))
    voxel_ml = MODEL_SPACING_MM**3 / 1000.0
    if sizes[biggest] * voxel_ml < MIN_TRUNK_ML:
        return None
    mask = labels == biggest
    lumen = ndimage.binary_erosion(mask) & (prob[CLOT] < VOXEL_THRESHOLD)
    if not lumen.any():
        lumen = mask
    lps = _to_lps(np.argwhere(mask).astype(np.float64), grid, affine)
    top = lps[:, 2] >= np.quantile(lps[:, 2], 1.0 - BIFURCATION_FRACTION)
    return Trunk(
        mask=mask,
        volume_ml=float(sizes[biggest] * voxel_ml),
        median_hu=float(np.median(model_hu[lumen])),
        bifurcation_x_lps=float(lps[top, 0].mean()),
        bifurcation_lps=(
            float(lps[top, 0].mean()),
            float(lps[top, 1].mean()),
            float(lps[top, 2].mean()),
        ),
    )


def artery_zone(prob: FloatVolume) -> BoolVolume:
    """Where emboli may be: predicted pulmonary arteries, slightly grown."""
    arteries: BoolVolume = (prob[ARTERY] >= 0.5) | (prob[TRUNK] >= 0.5)
    if not arteries.any():
        return arteries
    zone: BoolVolume = ndimage.binary_dilation(arteries, iterations=ARTERY_ZONE_DILATION)
    return zone


def study_probability(
    prob: FloatVolume, zone: BoolVolume, calibration: Calibration | None = None
) -> float:
    """Probability that the study shows an embolus: the most probable candidate component
    in the artery zone (``calibration`` of its mass; a study without candidates gets the
    calibrated probability of zero mass). Without a calibration, the highest voxel embolus
    probability in the zone. 0 when there is no zone."""
    if not zone.any():
        return 0.0
    if calibration is None:
        return float(np.clip(prob[CLOT][zone].max(), 0.0, 1.0))
    labels, n = ndimage.label((prob[CLOT] >= VOXEL_THRESHOLD) & zone)
    masses = component_masses(prob[CLOT], labels, n)
    return calibration.probability(float(masses.max()) if n else 0.0)


def component_masses(
    clot: npt.NDArray[np.float32], labels: npt.NDArray[np.int32], n: int
) -> npt.NDArray[np.float64]:
    """Probability mass (mL) of components 1..n of ``labels``."""
    sums = np.bincount(labels.ravel(), weights=clot.ravel(), minlength=n + 1)[1 : n + 1]
    return sums.astype(np.float64) * (MODEL_SPACING_MM**3 / 1000.0)


def bifurcation_gap(x: npt.NDArray[np.float64], reference_x: float) -> float:
    """Patient-x distance from the bifurcation to the nearest voxel of an embolus (0 when it
    spans the bifurcation)."""
    lo, hi = float(x.min()) - reference_x, float(x.max()) - reference_x
    return 0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi))


def level_of(radius_mm: float, in_trunk: bool, gap_mm: float = math.inf) -> Level:
    """Central (trunk or main artery), lobar or segmental from the lumen radius at the
    embolus, whether it lies in the trunk and its distance to the bifurcation."""
    if in_trunk or gap_mm <= NEAR_BIFURCATION_MM or radius_mm >= CENTRAL_RADIUS_MM:
        return "central"
    return "lobar" if radius_mm >= LOBAR_RADIUS_MM else "segmental"


SEGMENTAL_AT = 0.5
"""Mean segmental probability (``artery_levels``) over an embolus's model voxels from which
an embolus that is not central is segmental."""

SegmentalMap = Callable[[], FloatVolume]
"""The level network's probability that each model voxel lies in a segmental artery, asked
for only when an embolus that is not central needs it (the network takes about a quarter of
a study's run time, and most studies have no such embolus)."""


def branch_level(
    level: Level,
    segmental: SegmentalMap | None,
    voxels: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]],
) -> Level:
    """``level`` (from ``level_of``), with lobar or segmental named by the level network's
    segmental probability at the embolus's model ``voxels`` when there is one."""
    if level == "central" or segmental is None:
        return level
    return "segmental" if float(segmental()[voxels].mean()) >= SEGMENTAL_AT else "lobar"


def side_of(
    x: npt.NDArray[np.float64], level: Level, reference_x: float, in_trunk: bool = False
) -> Side | None:
    """Side of an embolus from its voxels' patient x and the bifurcation's: bilateral for a
    central embolus straddling the bifurcation, None for one confined to the trunk."""
    right_reach = reference_x - float(x.min())
    left_reach = float(x.max()) - reference_x
    if level == "central":
        if right_reach >= SADDLE_RIGHT_MM and left_reach >= SADDLE_LEFT_MM:
            return "both"
        if in_trunk:
            return None
    return "left" if float(np.median(x)) > reference_x else "right"


def _to_input(
    component: BoolVolume,
    box: tuple[slice, ...],
    grid: ModelGrid,
    input_shape: tuple[int, int, int],
) -> BoolVolume:
    """Nearest-neighbour copy of a model-grid component (cropped to ``box``) onto the input
    grid."""
    out = np.zeros(input_shape, dtype=bool)
    lo = np.floor(grid.to_input([b.start - 0.5 for b in box])).astype(int)
    hi = np.ceil(grid.to_input([b.stop - 0.5 for b in box])).astype(int) + 1
    lo = np.clip(lo, 0, np.array(input_shape))
    hi = np.clip(hi, 0, np.array(input_shape))
    if np.any(hi <= lo):
        return out
    axes, valid = [], []
    for a in range(3):
        model = np.rint((np.arange(lo[a], hi[a]) - grid.origin[a]) / grid.step[a]).astype(int)
        local = model - box[a].start
        valid.append((local >= 0) & (local < component.shape[a]))
        axes.append(np.clip(local, 0, component.shape[a] - 1))
    sub = component[np.ix_(*axes)] & valid[0][:, None, None]
    sub &= valid[1][None, :, None] & valid[2][None, None, :]
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = sub
    return out


def outline(plane: BoolVolume) -> tuple[tuple[float, float], ...]:
    """Closed (column, row) polygon: the radial extent of ``plane``'s mask on 32 rays from its
    centre (at least a one-pixel circle)."""
    rows, cols = np.nonzero(plane)
    ci, cj = float(rows.mean()), float(cols.mean())
    steps = np.arange(0.0, max(plane.shape), 0.25)
    pts: list[tuple[float, float]] = []
    for n in range(POLYGON_POINTS):
        a = 2.0 * math.pi * n / POLYGON_POINTS
        r_idx = np.rint(ci + steps * math.sin(a)).astype(int)
        c_idx = np.rint(cj + steps * math.cos(a)).astype(int)
        ok = (r_idx >= 0) & (r_idx < plane.shape[0]) & (c_idx >= 0) & (c_idx < plane.shape[1])
        inside = np.zeros(len(steps), dtype=bool)
        inside[ok] = plane[r_idx[ok], c_idx[ok]]
        first_out = int(np.argmin(inside)) if not inside.all() else len(steps)
        radius = max(float(steps[max(first_out - 1, 0)]) + 0.5, 1.0)
        pts.append((round(cj + radius * math.cos(a), 2), round(ci + radius * math.sin(a), 2)))
    return (*pts, pts[0])


def lumen_radius_mm(prob: FloatVolume, candidates: BoolVolume | None = None) -> FloatVolume:
    """Distance (mm) from each voxel of the predicted arteries (and ``candidates``) to their
    wall, on the model grid."""
    lumen = (prob[ARTERY] >= 0.5) | (prob[TRUNK] >= 0.5)
    if candidates is not None:
        lumen |= candidates
    radius: FloatVolume = np.zeros(lumen.shape, dtype=np.float32)
    if not lumen.any():
        return radius
    # The transform of the lumen's bounding box grown by one voxel of background: every
    # voxel outside it is background too, so the distances inside are the same.
    box = []
    for axis in range(3):
        present = np.flatnonzero(lumen.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(present[0]) - 1, 0), min(int(present[-1]) + 2, lumen.shape[axis])))
    radius[tuple(box)] = ndimage.distance_transform_edt(lumen[tuple(box)])
    radius *= np.float32(MODEL_SPACING_MM)
    return radius


def embolus_on_input_grid(
    box: tuple[slice, slice, slice],
    mask: BoolVolume,
    probability: float,
    radius_mm: FloatVolume,
    trunk: Trunk,
    grid: ModelGrid,
    input_shape: tuple[int, int, int],
    affine: npt.NDArray[np.float64],
    segmental: SegmentalMap | None = None,
) -> Embolus:
    """An embolus found on the input grid (``mask`` inside ``box``; the second stage), located
    like a first-stage one: level from the lumen radius of the model voxels it lies in (lobar
    or segmental from ``segmental``, the level network's output, when given), side from its
    patient x."""
    points = np.argwhere(mask).astype(np.float64) + [b.start for b in box]
    model = np.unique(np.rint(grid.to_model(points)).astype(np.intp), axis=0)
    model = np.clip(model, 0, np.array(grid.shape) - 1)
    # The lumen radius where the defect itself lies (not next to it, as for the network's
    # components, whose 2 mm voxels miss the thin rim of lumen around a clot): a small
    # segmental clot sits next to its parent lobar artery, whose radius would call it lobar.
    radius = float(radius_mm[model[:, 0], model[:, 1], model[:, 2]].max())
    in_trunk = float(trunk.mask[model[:, 0], model[:, 1], model[:, 2]].mean()) >= 0.5
    lps = points @ affine[:3, :3].T + affine[:3, 3]
    x = lps[:, 0]
    level = level_of(radius, in_trunk, bifurcation_gap(x, trunk.bifurcation_x_lps))
    level = branch_level(level, segmental, (model[:, 0], model[:, 1], model[:, 2]))
    full = np.zeros(input_shape, dtype=bool)
    full[box] = mask
    centre = points.mean(0)
    ks = np.flatnonzero(full.any(axis=(1, 2)))
    k = int(ks[np.argmin(np.abs(ks - centre[0]))])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return Embolus(
        probability=probability,
        peak=probability,
        mass_ml=0.0,
        centre_voxel=(float(centre[0]), float(centre[1]), float(centre[2])),
        level=level,
        in_trunk=in_trunk,
        side=side_of(x, level, trunk.bifurcation_x_lps, in_trunk),
        radius_mm=radius,
        mask=full,
        volume_mm3=float(mask.sum() * np.prod(spacing)),
        slice_index=k,
        outline=outline(full[k]),
    )


def _voxels(
    component: BoolVolume, box: tuple[slice, ...]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    k, i, j = np.nonzero(component)
    return k + box[0].start, i + box[1].start, j + box[2].start


def find_emboli(
    prob: FloatVolume,
    zone: BoolVolume,
    trunk: Trunk,
    grid: ModelGrid,
    input_shape: tuple[int, int, int],
    affine: npt.NDArray[np.float64],
    threshold: float,
    calibration: Calibration | None = None,
    max_findings: int = MAX_FINDINGS,
    lumen_radius: FloatVolume | None = None,
    segmental: SegmentalMap | None = None,
) -> list[Embolus]:
    """Candidate components (voxels >= ``VOXEL_THRESHOLD`` touching the artery zone) whose
    probability (``calibration`` of their mass, else their peak) reaches ``threshold``, most
    probable first, with level (lobar or segmental from ``segmental``, the level network's
    output, when given), side, mask and outline."""
    clot = prob[CLOT]
    candidates = (clot >= VOXEL_THRESHOLD) & zone
    labels, n = ndimage.label(candidates)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    inside = labels > 0
    values, owners = clot[inside], labels[inside]
    peaks = np.zeros(n + 1)
    np.maximum.at(peaks, owners, values)
    peaks = np.clip(peaks[1:], 0.0, 1.0)
    masses = component_masses(values, owners, n)
    probabilities = (
        peaks if calibration is None else np.array([calibration.probability(m) for m in masses])
    )
    keep = probabilities >= threshold
    order = [int(i) for i in index[keep][np.argsort(-probabilities[keep], kind="stable")]]
    radius = lumen_radius_mm(prob, candidates) if lumen_radius is None else lumen_radius
    boxes = ndimage.find_objects(labels)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    found: list[Embolus] = []
    for label in order[:max_findings]:
        box = boxes[label - 1]
        assert box is not None
        component = labels[box] == label
        grown = ndimage.binary_dilation(component, iterations=1)
        radius_mm = float(radius[box][grown].max())
        in_trunk = float(trunk.mask[box][component].mean()) >= 0.5
        points = np.argwhere(component).astype(np.float64) + [b.start for b in box]
        x = _to_lps(points, grid, affine)[:, 0]
        level = level_of(radius_mm, in_trunk, bifurcation_gap(x, trunk.bifurcation_x_lps))
        level = branch_level(level, segmental, _voxels(component, box))
        side = side_of(x, level, trunk.bifurcation_x_lps, in_trunk)
        weights = clot[box][component]
        centre = grid.to_input((points * weights[:, None]).sum(0) / weights.sum())
        mask = _to_input(component, box, grid, input_shape)
        k = int(np.clip(round(float(centre[0])), 0, input_shape[0] - 1))
        if not mask[k].any():
            ks = np.flatnonzero(mask.any(axis=(1, 2)))
            if not len(ks):
                continue
            k = int(ks[np.argmin(np.abs(ks - centre[0]))])
        found.append(
            Embolus(
                probability=float(probabilities[label - 1]),
                peak=float(peaks[label - 1]),
                mass_ml=float(masses[label - 1]),
                centre_voxel=(float(centre[0]), float(centre[1]), float(centre[2])),
                level=level,
                in_trunk=in_trunk,
                side=side,
                radius_mm=radius_mm,
                mask=mask,
                volume_mm3=float(mask.sum() * np.prod(spacing)),
                slice_index=k,
                outline=outline(mask[k]),
            )
        )
    return found
