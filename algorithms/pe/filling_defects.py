"""Second stage: filling defects along the predicted pulmonary arteries at the input's own
resolution, scored by a small learned classifier (numpy only).

The first-stage network works on a 2 mm grid, where a segmental artery is 2-5 voxels wide and
a small embolus in it is blurred away. This stage looks at the input voxels (about 1 mm) inside
the arteries the network found, grown by a few millimetres:

1. **Candidates**: voxels whose in-plane mean HU lies between ``DARK_FLOOR_HU`` and a ceiling
   set by the scan's own pulmonary trunk enhancement (clot is 20-70 HU, always well below the
   lumen) and that survive one in-plane erosion (the thin partial-volume shell around every
   vessel in the lung does not; an embolus 2 mm or more across does). Each connected core is one
   candidate.
2. **Features** of each candidate: its size and HU; the HU of a ring around it (enhanced lumen
   around a floating or wall-adherent clot, air around an occluded artery in the lung, soft
   tissue around a lymph node); the first-stage network's embolus, artery and trunk
   probabilities there; its shape and where it lies relative to the pulmonary trunk.
3. **Scorer** (``second_stage``): a small CNN on vessel-aligned patches of each candidate
   (``defects_cnn.onnx``), or gradient-boosted decision trees on the features
   (``DefectClassifier``, in ``defects.json``), both trained on candidates of generated scans,
   never on the validation or test splits, give each candidate the probability that it is an
   embolus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from algorithms.lung_nodule.preprocess import AIR_HU
from algorithms.pe.postprocess import ARTERY, CLOT, TRUNK
from algorithms.pe.preprocess import ModelGrid

ZONE_ARTERY_PROBABILITY = 0.3
"""First-stage artery (or embolus) probability that puts a model voxel into the search zone."""
ZONE_DILATION = 2
"""Model voxels (2 mm each) by which the search zone is grown: a blocked segmental artery is
often only partly predicted."""
DARK_FLOOR_HU = -100.0
"""In-plane mean HU below which a voxel is lung, not clot (a thin clot is averaged with air)."""
MIN_CEILING_HU = 60.0
CEILING_GAP_HU = 30.0
"""The ceiling is the lower of (trunk HU - gap) and the midpoint between clot (40 HU) and the
trunk's HU, never below ``MIN_CEILING_HU``."""
MAX_CANDIDATES = 600
"""Largest candidates first; a scan with more cores than this keeps the largest ones."""
RING_WIDTH = 2
OUTER_RING = 4
"""In-plane voxels of the ring around a candidate (and of an outer ring beyond it) whose HU
are features: what surrounds a clot says whether it sits in a lumen."""

FEATURES = (
    "log_volume_mm3",
    "mean_hu_minus_trunk",
    "mean_hu",
    "std_hu",
    "min_hu",
    "p75_hu",
    "trunk_hu",
    "ring_mean_hu",
    "ring_bright_fraction",
    "ring_air_fraction",
    "ring_max_hu_minus_trunk",
    "outer_bright_fraction",
    "outer_air_fraction",
    "stage1_embolus_max",
    "stage1_embolus_mean",
    "stage1_artery_mean",
    "stage1_artery_max",
    "stage1_trunk_max",
    "stage1_lumen_radius_mm",
    "extent_long_mm",
    "extent_short_mm",
    "fill_fraction",
    "distance_to_bifurcation_mm",
    "height_above_bifurcation_mm",
    "slice_mm",
    "pixel_mm",
)
"""Names of the candidate features, in the order the classifier reads them."""


@dataclass(frozen=True)
class Candidates:
    """Filling-defect candidates of one scan (input grid, inside ``box``)."""

    box: tuple[slice, slice, slice]
    labels: npt.NDArray[np.int32]
    """Inside ``box``: 0 outside candidates, n for candidate n (1-based, dark voxels grown
    around each core)."""
    features: npt.NDArray[np.float32]
    """(n, len(FEATURES))."""

    @property
    def count(self) -> int:
        return int(self.features.shape[0])

    def regions(
        self,
    ) -> list[tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]] | None]:
        """Per candidate, its bounding box on the input grid and its mask inside it (None for
        a candidate with no voxel left)."""
        start = [b.start for b in self.box]
        found: list[tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]] | None] = []
        for label, local in enumerate(ndimage.find_objects(self.labels, self.count), start=1):
            if local is None:
                found.append(None)
                continue
            box = tuple(slice(s.start + o, s.stop + o) for s, o in zip(local, start, strict=True))
            found.append(((box[0], box[1], box[2]), self.labels[local] == label))
        return found


def input_zone(
    prob: npt.NDArray[np.float32], grid: ModelGrid, input_shape: tuple[int, int, int]
) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]] | None:
    """The search zone on the input grid: its bounding box and the mask inside it."""
    zone = (prob[ARTERY] >= ZONE_ARTERY_PROBABILITY) | (prob[TRUNK] >= 0.5)
    zone |= prob[CLOT] >= ZONE_ARTERY_PROBABILITY
    if not zone.any():
        return None
    zone = ndimage.binary_dilation(zone, iterations=ZONE_DILATION)
    found = ndimage.find_objects(zone.astype(np.uint8))[0]
    assert found is not None
    axes: list[npt.NDArray[np.intp]] = []
    box: list[slice] = []
    for a, n in enumerate(input_shape):
        lo = max(0, math.floor(grid.origin[a] + (found[a].start - 0.5) * grid.step[a]))
        hi = min(n, math.ceil(grid.origin[a] + (found[a].stop - 0.5) * grid.step[a]) + 1)
        model = np.rint((np.arange(lo, hi) - grid.origin[a]) / grid.step[a]).astype(np.intp)
        axes.append(np.clip(model, 0, grid.shape[a] - 1))
        box.append(slice(lo, hi))
    mask = zone[np.ix_(*axes)]
    return (box[0], box[1], box[2]), mask


def ceiling_hu(trunk_hu: float) -> float:
    """Highest in-plane mean HU a candidate voxel may have in a scan with this trunk HU."""
    return max(MIN_CEILING_HU, min(trunk_hu - CEILING_GAP_HU, (trunk_hu + 40.0) / 2.0))


def _in_plane_mean(vol: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = ndimage.uniform_filter(vol, size=(1, 3, 3), mode="nearest")
    return out


def find_candidates(
    hu: npt.NDArray[np.float32],
    spacing_mm: tuple[float, float, float],
    prob: npt.NDArray[np.float32],
    grid: ModelGrid,
    trunk_hu: float,
    bifurcation_lps: tuple[float, float, float],
    affine: npt.NDArray[np.float64],
    lumen_radius_mm: npt.NDArray[np.float32],
) -> Candidates | None:
    """Candidate filling defects in the zone around the predicted arteries, with features
    (``lumen_radius_mm``: the first stage's lumen radius on the model grid)."""
    shape = (int(hu.shape[0]), int(hu.shape[1]), int(hu.shape[2]))
    located = input_zone(prob, grid, shape)
    if located is None:
        return None
    box, zone = located
    vol = np.asarray(hu[box], dtype=np.float32)
    work = WorkGrid.for_pixel(spacing_mm, box, vol.shape)
    if work.resampled:
        vol = work.linear(vol)
        zone = work.nearest(zone)
    smooth = _in_plane_mean(vol)
    dark = zone & (smooth >= DARK_FLOOR_HU) & (smooth <= ceiling_hu(trunk_hu))
    core = ndimage.binary_erosion(dark, structure=np.ones((1, 3, 3), dtype=bool))
    cores, n = ndimage.label(core)
    if n > MAX_CANDIDATES:
        sizes = np.bincount(cores.ravel(), minlength=n + 1)[1:]
        keep = np.zeros(n + 1, dtype=bool)
        keep[1:][np.argsort(-sizes, kind="stable")[:MAX_CANDIDATES]] = True
        cores, n = ndimage.label(keep[cores])
    context = _Context(
        vol,
        smooth,
        dark,
        work,
        prob,
        grid,
        trunk_hu,
        bifurcation_lps,
        affine,
        lumen_radius_mm,
    )
    labels = np.zeros(vol.shape, dtype=np.int32)
    features = np.zeros((n, len(FEATURES)), dtype=np.float32)
    for i, sl in enumerate(ndimage.find_objects(cores)):
        if sl is not None:
            features[i] = context.describe(cores, i + 1, sl, labels)
    return Candidates(box, work.to_input_labels(labels), features)


FINEST_PIXEL_MM = 0.85
WORK_PIXEL_MM = 0.95
"""Inputs with pixels finer than ``FINEST_PIXEL_MM`` (most 512 x 512 chest CTs: 0.6-0.8 mm)
are searched on an in-plane grid of ``WORK_PIXEL_MM``: the candidate rules count voxels, and
the classifier was trained on 0.85-1.05 mm pixels. It also halves the work."""


@dataclass(frozen=True)
class WorkGrid:
    """Where the candidate search runs: the input box itself, or the box resampled in-plane.
    Input index = origin + work index * step."""

    origin: tuple[float, float, float]
    step: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    input_shape: tuple[int, int, int]
    """Shape of the input box."""
    zoom: tuple[float, float, float]

    @property
    def resampled(self) -> bool:
        return self.zoom != (1.0, 1.0, 1.0)

    @classmethod
    def for_pixel(
        cls,
        spacing_mm: tuple[float, float, float],
        box: tuple[slice, slice, slice],
        box_shape: tuple[int, ...],
    ) -> WorkGrid:
        origin = (float(box[0].start), float(box[1].start), float(box[2].start))
        shape = (int(box_shape[0]), int(box_shape[1]), int(box_shape[2]))
        if min(spacing_mm[1], spacing_mm[2]) >= FINEST_PIXEL_MM:
            return cls(origin, (1.0, 1.0, 1.0), spacing_mm, shape, (1.0, 1.0, 1.0))
        zoom = [1.0, 1.0, 1.0]
        step = [1.0, 1.0, 1.0]
        spacing = list(spacing_mm)
        for a in (1, 2):
            n = shape[a]
            out = max(2, round(n * spacing_mm[a] / WORK_PIXEL_MM))
            zoom[a] = out / n
            # ndimage.zoom (grid_mode=False) maps the first and last voxels onto each other.
            step[a] = (n - 1) / (out - 1) if n > 1 else 1.0
            spacing[a] = spacing_mm[a] * step[a]
        return cls(
            origin,
            (step[0], step[1], step[2]),
            (spacing[0], spacing[1], spacing[2]),
            shape,
            (zoom[0], zoom[1], zoom[2]),
        )

    def to_input(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """(n, 3) work-grid indices to input indices."""
        out: npt.NDArray[np.float64] = np.asarray(self.origin) + points * np.asarray(self.step)
        return out

    def _positions(self, axis: int) -> npt.NDArray[np.float64]:
        """Input-box positions of the work grid's voxels along ``axis``."""
        n = self.input_shape[axis]
        out = max(1, round(n * self.zoom[axis]))
        positions: npt.NDArray[np.float64] = np.minimum(np.arange(out) * self.step[axis], n - 1)
        return positions

    def linear(self, vol: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The input box on the work grid, linearly interpolated in-plane."""
        out = vol
        for axis in (1, 2):
            x = self._positions(axis)
            lo = np.floor(x).astype(np.intp)
            hi = np.minimum(lo + 1, self.input_shape[axis] - 1)
            shape = [1, 1, 1]
            shape[axis] = len(x)
            f = (x - lo).astype(np.float32).reshape(shape)
            a, b = np.take(out, lo, axis=axis), np.take(out, hi, axis=axis)
            b -= a  # a + (b - a) * f in place: the same values, no temporaries of the box
            b *= f
            b += a
            out = b
        return out

    def nearest(self, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """A mask on the input box moved onto the work grid (nearest neighbour)."""
        axes = [np.arange(self.input_shape[0])] + [
            np.rint(self._positions(a)).astype(np.intp) for a in (1, 2)
        ]
        moved: npt.NDArray[np.bool_] = mask[np.ix_(*axes)]
        return moved

    def to_input_labels(self, labels: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
        """Work-grid labels on the input box (nearest neighbour)."""
        if not self.resampled:
            return labels
        axes = [
            np.clip(np.rint(np.arange(n) / self.step[a]), 0, labels.shape[a] - 1).astype(np.intp)
            for a, n in enumerate(self.input_shape)
        ]
        mapped: npt.NDArray[np.int32] = labels[np.ix_(*axes)]
        return mapped


@dataclass(frozen=True)
class _Context:
    """What the features of one scan's candidates are computed from."""

    vol: npt.NDArray[np.float32]
    smooth: npt.NDArray[np.float32]
    dark: npt.NDArray[np.bool_]
    work: WorkGrid
    prob: npt.NDArray[np.float32]
    grid: ModelGrid
    trunk_hu: float
    bifurcation_lps: tuple[float, float, float]
    affine: npt.NDArray[np.float64]
    lumen_radius_mm: npt.NDArray[np.float32]

    def describe(
        self,
        cores: npt.NDArray[np.int32],
        label: int,
        sl: tuple[slice, ...],
        labels: npt.NDArray[np.int32],
    ) -> tuple[float, ...]:
        """Features of core ``label`` (bounding box ``sl``); writes the candidate (the core
        grown by one in-plane voxel within the dark region) into ``labels``."""
        reach = OUTER_RING + 1
        pad = tuple(
            slice(s.start, s.stop)
            if a == 0
            else slice(max(0, s.start - reach), min(cores.shape[a], s.stop + reach))
            for a, s in enumerate(sl)
        )
        in_plane = np.ones((1, 3, 3), dtype=bool)
        core = cores[pad] == label
        mine = ndimage.binary_dilation(core, structure=in_plane)
        mine &= self.dark[pad] & (labels[pad] == 0)
        mine |= core
        labels[pad][mine] = label
        values = self.vol[pad][mine]
        smooth = self.smooth[pad]
        ring = ndimage.binary_dilation(mine, structure=in_plane, iterations=RING_WIDTH)
        outer = ndimage.binary_dilation(
            ring, structure=in_plane, iterations=OUTER_RING - RING_WIDTH
        )
        outer &= ~ring
        ring &= ~self.dark[pad]
        ring_values = smooth[ring] if ring.any() else values
        outer_values = smooth[outer] if outer.any() else ring_values
        work_points = np.argwhere(mine).astype(np.float64) + [p.start for p in pad]
        points = self.work.to_input(work_points)
        model = np.clip(
            np.rint(self.grid.to_model(points)).astype(np.intp), 0, np.array(self.grid.shape) - 1
        )
        p = self.prob[:, model[:, 0], model[:, 1], model[:, 2]]
        radius = float(self.lumen_radius_mm[model[:, 0], model[:, 1], model[:, 2]].max())
        lps = points @ self.affine[:3, :3].T + self.affine[:3, 3]
        span = work_points.max(0) - work_points.min(0) + 1.0
        spacing = self.work.spacing_mm
        extent = span * np.asarray(spacing)
        centre = lps.mean(0)
        bright = ceiling_hu(self.trunk_hu)
        mean_hu = float(values.mean())
        bif = self.bifurcation_lps
        return (
            math.log(len(values) * float(np.prod(spacing))),
            mean_hu - self.trunk_hu,
            mean_hu,
            float(values.std()),
            float(values.min()),
            float(np.percentile(values, 75)),
            self.trunk_hu,
            float(ring_values.mean()),
            float((ring_values > bright).mean()),
            float((ring_values < AIR_HU).mean()),
            float(ring_values.max()) - self.trunk_hu,
            float((outer_values > bright).mean()),
            float((outer_values < AIR_HU).mean()),
            float(p[CLOT].max()),
            float(p[CLOT].mean()),
            float(p[ARTERY].mean()),
            float(p[ARTERY].max()),
            float(p[TRUNK].max()),
            radius,
            float(extent.max()),
            float(extent.min()),
            float(len(values) / np.prod(span)),
            float(np.hypot(centre[0] - bif[0], centre[1] - bif[1])),
            float(centre[2] - bif[2]),
            float(spacing[0]),
            float(spacing[1]),
        )


@dataclass(frozen=True)
class DefectClassifier:
    """Gradient-boosted decision trees on the candidate features (as trained by
    ``training.pe.train_defects`` with scikit-learn's HistGradientBoostingClassifier,
    evaluated here with numpy): p = sigmoid(baseline + sum of the trees' leaf values)."""

    baseline: float
    trees: tuple[npt.NDArray[np.float64], ...]
    """Per tree, one row per node: feature, threshold, left, right, value, is_leaf,
    missing_go_left (children by row number; a sample goes left when its feature is at most
    the threshold)."""

    def candidate_probabilities(
        self,
        hu: npt.NDArray[np.float32],
        spacing_mm: tuple[float, float, float],
        candidates: Candidates,
        trunk_hu: float,
    ) -> npt.NDArray[np.float64]:
        """The trees read the candidates' features only (``second_stage.CandidateScorer``)."""
        return self.probabilities(candidates.features)

    def probabilities(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        x = np.asarray(features, dtype=np.float64)
        raw = np.full(len(x), self.baseline)
        rows = np.arange(len(x))
        for tree in self.trees:
            node = np.zeros(len(x), dtype=np.intp)
            while True:
                inner = tree[node, 5] == 0
                if not inner.any():
                    break
                at = node[inner]
                value = x[rows[inner], tree[at, 0].astype(np.intp)]
                left = np.where(np.isnan(value), tree[at, 6] == 1, value <= tree[at, 1])
                node[inner] = np.where(left, tree[at, 2], tree[at, 3]).astype(np.intp)
            raw += tree[node, 4]
        p: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(raw, -50.0, 50.0)))
        return p

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DefectClassifier:
        if list(data["features"]) != list(FEATURES):
            raise ValueError("defects.json was trained on other features than this code computes")
        trees = tuple(np.asarray(t, dtype=np.float64).reshape(-1, 7) for t in data["trees"])
        return cls(baseline=float(data["baseline"]), trees=trees)

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(FEATURES),
            "baseline": self.baseline,
            "tree_columns": [
                "feature",
                "threshold",
                "left",
                "right",
                "value",
                "is_leaf",
                "missing_go_left",
            ],
            "trees": [[[float(f"{v:.7g}") for v in row] for row in t] for t in self.trees],
        }


MERGE_GAP_VOXELS = 2
"""Defects within this many input voxels of each other are one embolus: one clot often gives
several cores."""


@dataclass(frozen=True)
class Defect:
    """A scored candidate (or a group of nearby ones) on the input grid."""

    probability: float
    box: tuple[slice, slice, slice]
    """Input-grid bounding box of ``mask``."""
    mask: npt.NDArray[np.bool_]


def score(candidates: Candidates, p: npt.NDArray[np.float64], floor: float) -> tuple[Defect, ...]:
    """Candidates whose probability ``p`` (from the second stage's scorer) reaches ``floor``,
    most probable first."""
    regions = candidates.regions()
    kept: list[Defect] = []
    for i in np.argsort(-p, kind="stable"):
        region = regions[i]
        if p[i] < floor or region is None:
            continue
        kept.append(Defect(float(p[i]), *region))
    return tuple(kept)


def merge_nearby(defects: list[Defect]) -> list[Defect]:
    """Groups of defects lying within ``MERGE_GAP_VOXELS`` of each other, as one defect each
    with the highest probability of the group, most probable first."""
    if len(defects) < 2:
        return list(defects)
    lo = np.min([[b.start for b in d.box] for d in defects], axis=0)
    hi = np.max([[b.stop for b in d.box] for d in defects], axis=0)
    pad = np.full(3, MERGE_GAP_VOXELS)
    lo_p = np.maximum(lo - pad, 0)
    canvas = np.zeros(tuple(hi + pad - lo_p), dtype=np.int32)
    for n, d in enumerate(defects, start=1):
        local = tuple(slice(b.start - o, b.stop - o) for b, o in zip(d.box, lo_p, strict=True))
        canvas[local][d.mask] = n
    structure = np.ones((3, 3, 3), dtype=bool)
    near = ndimage.binary_dilation(canvas > 0, structure=structure, iterations=MERGE_GAP_VOXELS)
    groups, _count = ndimage.label(near)
    merged: list[Defect] = []
    for g, sl in enumerate(ndimage.find_objects(groups), start=1):
        if sl is None:
            continue
        members = np.unique(canvas[sl][groups[sl] == g])
        members = members[members > 0]
        if not len(members):
            continue
        mask = (groups[sl] == g) & np.isin(canvas[sl], members)
        tight = ndimage.find_objects(mask.astype(np.uint8))[0]
        assert tight is not None
        box = tuple(
            slice(s.start + t.start + int(o), s.start + t.stop + int(o))
            for s, t, o in zip(sl, tight, lo_p, strict=True)
        )
        p = max(defects[int(m) - 1].probability for m in members)
        merged.append(Defect(p, (box[0], box[1], box[2]), mask[tight]))
    merged.sort(key=lambda d: -d.probability)
    return merged
