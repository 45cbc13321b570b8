"""The model grid of a FLAIR series (axial slices, 1 mm pixels), resampling onto it and back, and
intensity normalisation (shared by training and inference, numpy/scipy only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

MODEL_PIXEL_MM = 1.0
"""In-plane pixel size of the model grid."""
SIZE_DIVISOR = 8
"""The U-Net needs in-plane sizes that are multiples of this (three 2x poolings)."""
MAX_AXIAL_TILT_DEG = 30.0
"""Largest angle between the slice normal and the head-feet axis still treated as axial."""
MAX_ISOTROPIC_SPACING_MM = 1.6
MAX_ISOTROPIC_RATIO = 1.6
"""A volume whose spacings are all below the first and within this ratio of each other is
isotropic enough to be reformatted into axial slices, whatever its acquisition plane."""
HEAD_THRESHOLD_FRACTION = 0.1
"""Voxels above this fraction of the 99th percentile count as head (for cropping and scaling)."""
CROP_MARGIN_MM = 6.0
INTENSITY_CLIP = 5.0
"""Normalised intensities (1 ~ brain tissue) are clipped to [0, INTENSITY_CLIP]."""

FloatVolume = npt.NDArray[np.float32]
Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ModelGrid:
    """Where the model grid lies: ``model_to_input`` maps model (k, i, j, 1) to input (k, i, j, 1).

    ``slice_preserving`` grids keep the input's slices (model slice k is input slice k, only
    resampled in plane); reformatted grids are axial whatever the input plane.
    """

    model_to_input: Matrix
    shape: tuple[int, int, int]
    affine: Matrix
    """Model (k, i, j, 1) -> LPS mm."""
    slice_preserving: bool

    def __post_init__(self) -> None:
        if self.model_to_input.shape != (4, 4) or self.affine.shape != (4, 4):
            raise ValueError("ModelGrid matrices must be 4x4")

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    def cropped(self, lo: tuple[int, int, int], shape: tuple[int, int, int]) -> ModelGrid:
        """The sub-grid starting at model index ``lo`` with ``shape``."""
        shift = np.eye(4)
        shift[:3, 3] = lo
        return ModelGrid(
            self.model_to_input @ shift, shape, self.affine @ shift, self.slice_preserving
        )


def _spacing(affine: Matrix) -> npt.NDArray[np.float64]:
    result: npt.NDArray[np.float64] = np.linalg.norm(affine[:3, :3], axis=0)
    return result


def axial_tilt_deg(affine: Matrix) -> float:
    """Angle between the slice normal (row x column direction) and the head-feet axis."""
    normal = np.cross(affine[:3, 1], affine[:3, 2])
    normal /= max(float(np.linalg.norm(normal)), 1e-12)
    return float(np.degrees(np.arccos(min(1.0, abs(float(normal[2]))))))


def is_isotropic(affine: Matrix) -> bool:
    s = _spacing(affine)
    return bool(s.max() <= MAX_ISOTROPIC_SPACING_MM and s.max() / s.min() <= MAX_ISOTROPIC_RATIO)


def plan_grid(affine: Matrix, shape: tuple[int, int, int]) -> ModelGrid | None:
    """The model grid for an input volume, or None if it is neither axial nor isotropic.

    Axial inputs keep their slices; in plane, the model axes run towards the patient's left
    (columns) and back (rows), projected into the slice plane, at 1 mm. Isotropic volumes in
    another plane are reformatted onto an axial LPS-aligned grid at their own mean spacing.
    """
    corners = np.array(
        [
            [k, i, j, 1.0]
            for k in (0, shape[0] - 1)
            for i in (0, shape[1] - 1)
            for j in (0, shape[2] - 1)
        ]
    ).T
    corners_lps = (affine @ corners)[:3]
    if axial_tilt_deg(affine) <= MAX_AXIAL_TILT_DEG:
        step = affine[:3, 0]
        normal = np.cross(affine[:3, 1], affine[:3, 2])
        normal /= np.linalg.norm(normal)
        col = np.array([1.0, 0.0, 0.0]) - normal[0] * normal
        col /= np.linalg.norm(col)
        row = np.cross(normal, col)
        if row[1] < 0:
            row = -row
        rel = corners_lps - affine[:3, 3:4]
        extent_row = rel.T @ row
        extent_col = rel.T @ col
        origin = affine[:3, 3] + row * extent_row.min() + col * extent_col.min()
        n_rows = math.floor((extent_row.max() - extent_row.min()) / MODEL_PIXEL_MM) + 1
        n_cols = math.floor((extent_col.max() - extent_col.min()) / MODEL_PIXEL_MM) + 1
        model_affine = np.eye(4)
        model_affine[:3, 0] = step
        model_affine[:3, 1] = row * MODEL_PIXEL_MM
        model_affine[:3, 2] = col * MODEL_PIXEL_MM
        model_affine[:3, 3] = origin
        grid_shape = (shape[0], n_rows, n_cols)
        preserving = True
    elif is_isotropic(affine):
        iso = float(_spacing(affine).mean())
        lo, hi = corners_lps.min(axis=1), corners_lps.max(axis=1)
        model_affine = np.eye(4)
        model_affine[:3, 0] = (0.0, 0.0, iso)
        model_affine[:3, 1] = (0.0, MODEL_PIXEL_MM, 0.0)
        model_affine[:3, 2] = (MODEL_PIXEL_MM, 0.0, 0.0)
        model_affine[:3, 3] = lo
        size = hi - lo
        grid_shape = (
            int(size[2] // iso) + 1,
            int(size[1] // MODEL_PIXEL_MM) + 1,
            int(size[0] // MODEL_PIXEL_MM) + 1,
        )
        preserving = False
    else:
        return None
    model_to_input = np.linalg.inv(affine) @ model_affine
    return ModelGrid(model_to_input, grid_shape, model_affine, preserving)


def resample(volume: npt.NDArray[np.floating], grid: ModelGrid, order: int = 1) -> FloatVolume:
    """Sample an input volume on the model grid (0 outside the input); anti-aliased first when
    the model grid is coarser than the input."""
    vol = np.asarray(volume, dtype=np.float32)
    if order > 0:
        # Input-index step of one model voxel along each input axis: blur where it exceeds 1.5.
        step = np.abs(grid.model_to_input[:3, :3]).max(axis=1)
        sigma = [0.4 * s if s > 1.5 else 0.0 for s in step]
        if grid.slice_preserving:
            sigma[0] = 0.0
        if any(sigma):
            vol = ndimage.gaussian_filter(vol, sigma)
    out = ndimage.affine_transform(
        vol,
        grid.model_to_input[:3, :3],
        offset=grid.model_to_input[:3, 3],
        output_shape=grid.shape,
        order=order,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )
    result: FloatVolume = out.astype(np.float32, copy=False)
    return result


def to_input(
    model_volume: npt.NDArray[np.floating], grid: ModelGrid, input_shape: tuple[int, int, int]
) -> FloatVolume:
    """Sample a model-grid map (e.g. probabilities) back on the input grid (linear)."""
    back = np.linalg.inv(grid.model_to_input)
    out = ndimage.affine_transform(
        np.asarray(model_volume, dtype=np.float32),
        back[:3, :3],
        offset=back[:3, 3],
        output_shape=input_shape,
        order=1,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )
    result: FloatVolume = out.astype(np.float32, copy=False)
    return result


def head_box(
    model_volume: FloatVolume, grid: ModelGrid
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """(lo, shape) of the head's bounding box on the model grid plus a margin, in-plane sizes
    rounded up to SIZE_DIVISOR; all slices are kept on slice-preserving grids. None if empty."""
    sample = model_volume[:: max(1, model_volume.shape[0] // 24)]
    top = float(np.percentile(sample, 99.0))
    if top <= 0:
        return None
    head = model_volume > HEAD_THRESHOLD_FRACTION * top
    head = ndimage.binary_opening(head, iterations=1)
    if not head.any():
        return None
    lo: list[int] = []
    size: list[int] = []
    spacing = grid.spacing_mm
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(head.any(axis=other))
        n = model_volume.shape[axis]
        if axis == 0 and grid.slice_preserving:
            lo.append(0)
            size.append(n)
            continue
        margin = math.ceil(CROP_MARGIN_MM / spacing[axis])
        a, b = max(0, int(idx[0]) - margin), min(n, int(idx[-1]) + 1 + margin)
        if axis > 0:
            want = -(-(b - a) // SIZE_DIVISOR) * SIZE_DIVISOR
            a = max(0, min(a - (want - (b - a)) // 2, n - want)) if want <= n else 0
            b = a + want
        lo.append(a)
        size.append(b - a)
    return (lo[0], lo[1], lo[2]), (size[0], size[1], size[2])


def crop(
    volume: npt.NDArray[np.generic], lo: tuple[int, int, int], shape: tuple[int, int, int]
) -> npt.NDArray[np.generic]:
    """The box of ``volume`` at ``lo`` with ``shape``, zero-padded where it leaves the volume."""
    out = np.zeros(shape, dtype=volume.dtype)
    src = tuple(slice(a, min(a + s, n)) for a, s, n in zip(lo, shape, volume.shape, strict=True))
    dst = tuple(slice(0, sl.stop - sl.start) for sl in src)
    out[dst] = volume[src]
    return out


def reference_level(model_volume: FloatVolume) -> float:
    """A robust brain-tissue level: the median of head voxels (mostly white and grey matter)."""
    sample = model_volume[:: max(1, model_volume.shape[0] // 32)]
    top = float(np.percentile(sample, 99.0))
    head = sample[sample > HEAD_THRESHOLD_FRACTION * top]
    if head.size == 0:
        return 1.0
    return max(float(np.median(head)), 1e-6)


def normalise(model_volume: FloatVolume, level: float | None = None) -> FloatVolume:
    """Divide by the brain-tissue level and clip to [0, INTENSITY_CLIP]."""
    ref = reference_level(model_volume) if level is None else level
    out: FloatVolume = np.clip(model_volume / np.float32(ref), 0.0, INTENSITY_CLIP).astype(
        np.float32
    )
    return out


@dataclass(frozen=True)
class PreparedVolume:
    """A series on its (cropped) model grid, normalised: what the network sees."""

    image: FloatVolume
    grid: ModelGrid
    level: float
    """The intensity that became 1.0 (for image checks on the input's own scale)."""


def prepare(array: npt.NDArray[np.floating], affine: Matrix) -> PreparedVolume | None:
    """Resample, crop to the head and normalise; None when the volume cannot be planned or holds
    no head."""
    shape = (int(array.shape[0]), int(array.shape[1]), int(array.shape[2]))
    grid = plan_grid(affine, shape)
    if grid is None:
        return None
    model = resample(array, grid)
    box = head_box(model, grid)
    if box is None:
        return None
    lo, size = box
    model = np.asarray(crop(model, lo, size), dtype=np.float32)
    grid = grid.cropped(lo, size)
    level = reference_level(model)
    return PreparedVolume(normalise(model, level), grid, level)
