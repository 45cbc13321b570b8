"""Turns model-grid probabilities into lesions: connected components, brain and size filters,
anatomical site, and each lesion's mask and measurements on the input grid."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from algorithms.ms_lesion import measure
from algorithms.ms_lesion.inference import OUTPUT_CHANNELS
from algorithms.ms_lesion.preprocess import ModelGrid

LESION_THRESHOLD = 0.5
"""Default operating point: model pixels at or above this probability are lesion."""
MIN_LESION_MM3 = 8.0
"""Smaller components (on the model grid) are noise."""
MIN_EXTENT_MM = 2.0
"""... and so are components narrower than this in plane."""
MIN_BRAIN_FRACTION = 0.75
"""A lesion must lie at least this much inside the brain the model recognises, ..."""
MIN_RING_BRAIN_FRACTION = 0.6
"""... and so must the tissue around it (BRAIN_RING_PIXELS in plane): scalp and orbital fat
are bright on FLAIR too."""
BRAIN_RING_PIXELS = 3
RING_PIXELS = 2
"""Width (model pixels, in plane) of the ring around a lesion whose tissue places it."""
INFRATENTORIAL_RING_FRACTION = 0.25
PERIVENTRICULAR_MM = 5.0
"""A lesion this close to a recognised ventricle is periventricular."""
JUXTACORTICAL_RING_FRACTION = 0.05
ANATOMY_THRESHOLD = 0.5

BoolVolume = npt.NDArray[np.bool_]
FloatVolume = npt.NDArray[np.float32]


class Site(enum.Enum):
    """Where a lesion lies (McDonald dissemination-in-space regions, and deep white matter)."""

    PERIVENTRICULAR = "periventricular"
    JUXTACORTICAL = "juxtacortical"
    DEEP = "deep white matter"
    BRAINSTEM = "brainstem"
    CEREBELLUM = "cerebellum"

    @property
    def infratentorial(self) -> bool:
        return self in (Site.BRAINSTEM, Site.CEREBELLUM)


@dataclass(frozen=True)
class Lesion:
    """One lesion: measured on the input grid, located on the model grid."""

    probability: float
    """Peak model probability."""
    centre_voxel: tuple[float, float, float]
    """Input (k, i, j): probability-weighted centre of the input-grid mask."""
    centre_lps: tuple[float, float, float]
    volume_mm3: float
    long_axis_mm: float
    slice_index: int
    outline: tuple[tuple[float, float], ...]
    site: Site
    points_lps: npt.NDArray[np.float64] = field(repr=False, compare=False)
    """(n, 3) LPS positions of the lesion's model-grid voxels (for matching across exams)."""
    box: tuple[slice, slice, slice] = field(repr=False, compare=False)
    """Input-grid box holding ``box_mask``."""
    box_mask: BoolVolume = field(repr=False, compare=False)
    component: int = 0
    """Label of the lesion's connected component on the model grid (internal)."""

    def mask(self, shape: tuple[int, int, int]) -> BoolVolume:
        """The lesion's voxels as a full input-shaped mask."""
        out = np.zeros(shape, dtype=bool)
        out[self.box] = self.box_mask
        return out


@dataclass(frozen=True)
class Segmentation:
    """Everything one exam's model run says, on its model grid."""

    lesions: tuple[Lesion, ...]
    """Largest first."""
    lesion_labels: npt.NDArray[np.int32] = field(repr=False)
    """Model grid: n where ``lesions[n - 1]`` is, 0 elsewhere."""
    lesion_probability: FloatVolume = field(repr=False)
    """Model grid."""
    anatomy: dict[str, BoolVolume] = field(repr=False)
    """Model-grid masks: ventricle, cortex, brainstem, cerebellum, brain."""
    grid: ModelGrid = field(repr=False)
    image: FloatVolume = field(repr=False)
    """The normalised model-grid image the network saw."""


def _brain_mask(anatomy: dict[str, BoolVolume]) -> BoolVolume:
    """Slice by slice: the region enclosed by cortex, ventricles, brainstem and cerebellum."""
    shell = anatomy["cortex"] | anatomy["ventricle"] | anatomy["brainstem"] | anatomy["cerebellum"]
    brain = np.zeros_like(shell)
    structure = np.ones((3, 3), dtype=bool)
    for k in range(shell.shape[0]):
        if shell[k].any():
            closed = ndimage.binary_closing(shell[k], structure, iterations=3)
            brain[k] = ndimage.binary_fill_holes(closed) | shell[k]
    return brain


def _site(
    labels: npt.NDArray[np.int32],
    label: int,
    box: tuple[slice, ...],
    anatomy: dict[str, BoolVolume],
    spacing: tuple[float, float, float],
) -> Site:
    """Where a lesion lies, judged by the tissue the model recognises in a ring around it (the
    lesion itself, bright, is often taken for cortex): brainstem or cerebellum when they make
    up INFRATENTORIAL_RING_FRACTION of the ring; else periventricular within
    PERIVENTRICULAR_MM of a ventricle (adjacent thick slices count as touching); else
    juxtacortical when cortex makes up more than JUXTACORTICAL_RING_FRACTION of the ring;
    else deep white matter."""
    pad = (
        2,
        int(np.ceil(PERIVENTRICULAR_MM / spacing[1])) + 3,
        int(np.ceil(PERIVENTRICULAR_MM / spacing[2])) + 3,
    )
    padded = _padded_box(box, labels.shape, pad)
    component = labels[padded] == label
    local = {name: mask[padded] for name, mask in anatomy.items()}
    in_plane = np.zeros((1, 3, 3), dtype=bool)
    in_plane[0] = True
    ring = ndimage.binary_dilation(component, in_plane, iterations=RING_PIXELS) & ~component
    ring_size = max(int(ring.sum()), 1)
    stem = int((ring & local["brainstem"]).sum()) + int((component & local["brainstem"]).sum())
    cerebellum = int((ring & local["cerebellum"]).sum()) + int(
        (component & local["cerebellum"]).sum()
    )
    infra_ring = int((ring & (local["brainstem"] | local["cerebellum"])).sum())
    if infra_ring >= INFRATENTORIAL_RING_FRACTION * ring_size:
        return Site.BRAINSTEM if stem >= cerebellum else Site.CEREBELLUM
    if local["ventricle"].any():
        sampling = (min(spacing[0], PERIVENTRICULAR_MM), spacing[1], spacing[2])
        distance = ndimage.distance_transform_edt(~local["ventricle"], sampling=sampling)
        if float(distance[component].min()) <= PERIVENTRICULAR_MM:
            return Site.PERIVENTRICULAR
    if int((ring & local["cortex"]).sum()) > JUXTACORTICAL_RING_FRACTION * ring_size:
        return Site.JUXTACORTICAL
    return Site.DEEP


def _inside_brain(
    labels: npt.NDArray[np.int32], label: int, box: tuple[slice, ...], brain: BoolVolume
) -> bool:
    padded = _padded_box(box, labels.shape, (0, BRAIN_RING_PIXELS, BRAIN_RING_PIXELS))
    component = labels[padded] == label
    in_plane = np.zeros((1, 3, 3), dtype=bool)
    in_plane[0] = True
    ring = ndimage.binary_dilation(component, in_plane, iterations=BRAIN_RING_PIXELS) & ~component
    local = brain[padded]
    return bool(
        (component & local).sum() >= MIN_BRAIN_FRACTION * component.sum()
        and (ring & local).sum() >= MIN_RING_BRAIN_FRACTION * max(int(ring.sum()), 1)
    )


def _padded_box(
    box: tuple[slice, ...], shape: tuple[int, ...], pad: tuple[int, ...]
) -> tuple[slice, slice, slice]:
    out = [
        slice(max(0, b.start - p), min(n, b.stop + p))
        for b, n, p in zip(box, shape, pad, strict=True)
    ]
    return out[0], out[1], out[2]


def _on_input(
    own_prob: FloatVolume,
    model_box: tuple[slice, slice, slice],
    grid: ModelGrid,
    input_shape: tuple[int, int, int],
    threshold: float,
) -> tuple[tuple[slice, slice, slice], BoolVolume, FloatVolume] | None:
    """The component's probability (zero elsewhere) sampled on the input voxels it covers."""
    corners = np.array(
        [
            [k, i, j, 1.0]
            for k in (model_box[0].start - 1, model_box[0].stop)
            for i in (model_box[1].start - 1, model_box[1].stop)
            for j in (model_box[2].start - 1, model_box[2].stop)
        ]
    ).T
    on_input = (grid.model_to_input @ corners)[:3]
    lo = np.clip(np.floor(on_input.min(axis=1)).astype(int), 0, np.array(input_shape))
    hi = np.clip(np.ceil(on_input.max(axis=1)).astype(int) + 1, 0, np.array(input_shape))
    if np.any(hi <= lo):
        return None
    box = (
        slice(int(lo[0]), int(hi[0])),
        slice(int(lo[1]), int(hi[1])),
        slice(int(lo[2]), int(hi[2])),
    )
    back = np.linalg.inv(grid.model_to_input)
    kk, ii, jj = np.meshgrid(
        *(np.arange(s.start, s.stop, dtype=np.float64) for s in box), indexing="ij"
    )
    points = np.stack([kk.ravel(), ii.ravel(), jj.ravel(), np.ones(kk.size)])
    model = (back @ points)[:3] - np.array([[s.start] for s in model_box])
    sampled = ndimage.map_coordinates(own_prob, model, order=1, mode="constant", cval=0.0)
    prob = sampled.reshape(kk.shape).astype(np.float32)
    return box, prob >= threshold, prob


def segment(
    probabilities: FloatVolume,
    image: FloatVolume,
    grid: ModelGrid,
    input_affine: npt.NDArray[np.float64],
    input_shape: tuple[int, int, int],
    threshold: float = LESION_THRESHOLD,
) -> Segmentation:
    """Lesions of one exam from the model's (channels, slices, rows, columns) output."""
    channel = {name: n for n, name in enumerate(OUTPUT_CHANNELS)}
    anatomy = {
        name: probabilities[channel[name]] >= ANATOMY_THRESHOLD
        for name in ("ventricle", "cortex", "brainstem", "cerebellum")
    }
    anatomy["brain"] = _brain_mask(anatomy)
    lesion_prob = probabilities[channel["lesion"]]
    labels, count = ndimage.label(lesion_prob >= threshold)
    spacing = grid.spacing_mm
    model_voxel_mm3 = float(np.prod(spacing))
    input_spacing = tuple(float(s) for s in np.linalg.norm(input_affine[:3, :3], axis=0))
    input_voxel_mm3 = float(abs(np.linalg.det(input_affine[:3, :3])))
    lesions: list[Lesion] = []
    boxes = ndimage.find_objects(labels)
    for label in range(1, count + 1):
        model_box = boxes[label - 1]
        if model_box is None:
            continue
        component = labels[model_box] == label
        n = int(component.sum())
        extent = max(model_box[1].stop - model_box[1].start, model_box[2].stop - model_box[2].start)
        if n * model_voxel_mm3 < MIN_LESION_MM3 or extent * spacing[1] < MIN_EXTENT_MM:
            continue
        if not _inside_brain(labels, label, model_box, anatomy["brain"]):
            continue
        peak = float(lesion_prob[model_box][component].max())
        site = _site(labels, label, model_box, anatomy, spacing)
        padded = _padded_box(model_box, labels.shape, (1, 2, 2))
        own = np.where(labels[padded] == label, lesion_prob[padded], np.float32(0.0))
        mapped = _on_input(own, padded, grid, input_shape, threshold)
        if mapped is None or not mapped[1].any():
            continue
        box, box_mask, box_prob = mapped
        weights = np.where(box_mask, box_prob, 0.0)
        centre_local = ndimage.center_of_mass(weights)
        centre = tuple(float(c + s.start) for c, s in zip(centre_local, box, strict=True))
        centre_lps = input_affine @ np.array([*centre, 1.0])
        full_index = np.argwhere(component) + np.array([s.start for s in model_box])
        points = grid.affine @ np.hstack([full_index, np.ones((len(full_index), 1))]).T
        local_slice = measure.largest_slice(box_mask)
        lesions.append(
            Lesion(
                probability=min(1.0, max(0.0, peak)),
                centre_voxel=(centre[0], centre[1], centre[2]),
                centre_lps=(float(centre_lps[0]), float(centre_lps[1]), float(centre_lps[2])),
                volume_mm3=float(box_mask.sum()) * input_voxel_mm3,
                long_axis_mm=measure.long_axis_mm(box_mask, input_spacing),  # type: ignore[arg-type]
                slice_index=local_slice + box[0].start,
                outline=tuple(
                    (c + box[2].start, r + box[1].start)
                    for c, r in measure.outline(box_mask[local_slice])
                ),
                site=site,
                points_lps=points[:3].T.copy(),
                box=box,
                box_mask=box_mask,
                component=label,
            )
        )
    lesions.sort(key=lambda les: -les.volume_mm3)
    lut = np.zeros(count + 1, dtype=np.int32)
    for n, les in enumerate(lesions, start=1):
        lut[les.component] = n
    return Segmentation(tuple(lesions), lut[labels], lesion_prob, anatomy, grid, image)


def sphere_diameter_mm(volume_mm3: float) -> float:
    """Diameter of the sphere of this volume (for reading volumes as sizes)."""
    return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0))
