"""Lung bounding box, resampling to the model grid and HU normalisation (shared by training
and inference, numpy/scipy only)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

logger = logging.getLogger(__name__)

MODEL_SPACING_MM = 1.5
"""Isotropic voxel size of the model grid."""
HU_WINDOW = (-1000.0, 500.0)
"""HU are clipped to this window, then mapped linearly to [-1, 1]."""
AIR_HU = -400.0
"""Voxels below this are air or aerated lung."""
MIN_LUNG_ML = 50.0
"""Smallest aerated region (both lungs together) that counts as lungs."""
LUNG_BOX_MARGIN_MM = 15.0

FloatVolume = npt.NDArray[np.float32]
Box = tuple[slice, slice, slice]


def normalise(hu: npt.NDArray[np.floating] | npt.NDArray[np.integer]) -> FloatVolume:
    """Map HU to the network's input range."""
    lo, hi = HU_WINDOW
    out = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    out -= (lo + hi) / 2
    out *= 2.0 / (hi - lo)
    return out


def _lung_components(air: npt.NDArray[np.bool_], min_voxels: int) -> npt.NDArray[np.bool_]:
    """Air components that touch no in-plane border of the grid (outside air does) and are big."""
    labels, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(air)
    border = np.unique(
        np.concatenate(
            [
                labels[:, 0, :].ravel(),
                labels[:, -1, :].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    keep[border] = False
    result: npt.NDArray[np.bool_] = keep[labels]
    return result


def find_lung_box(
    hu: npt.NDArray[np.floating], spacing_mm: tuple[float, float, float]
) -> Box | None:
    """Bounding box (input index slices) of the aerated lungs plus a margin; None if no lungs.

    Works on a ~3 mm subsample: air below -400 HU that is not connected to the in-plane edges
    of the image (air outside the body is) and is at least 50 mL.
    """
    steps = [max(1, round(3.0 / s)) for s in spacing_mm]
    sub = hu[:: steps[0], :: steps[1], :: steps[2]]
    sub_spacing = [s * st for s, st in zip(spacing_mm, steps, strict=True)]
    voxel_ml = float(np.prod(sub_spacing)) / 1000.0
    lungs = _lung_components(sub < AIR_HU, max(1, int(MIN_LUNG_ML / 10.0 / voxel_ml)))
    if lungs.sum() * voxel_ml < MIN_LUNG_ML:
        return None
    box: list[slice] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(lungs.any(axis=other))
        margin = int(np.ceil(LUNG_BOX_MARGIN_MM / spacing_mm[axis]))
        lo = max(0, int(idx[0]) * steps[axis] - margin)
        hi = min(hu.shape[axis], int(idx[-1]) * steps[axis] + steps[axis] + margin)
        box.append(slice(lo, hi))
    return (box[0], box[1], box[2])


@dataclass(frozen=True)
class ModelGrid:
    """Where the model grid lies in the input: input index = origin + model index * step."""

    origin: tuple[float, float, float]
    step: tuple[float, float, float]
    shape: tuple[int, int, int]

    def to_input(self, index: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Model-grid (k, i, j) index (or (n, 3) array of them) to input index."""
        idx = np.asarray(index, dtype=np.float64)
        result: npt.NDArray[np.float64] = np.asarray(self.origin) + idx * np.asarray(self.step)
        return result

    def to_model(self, index: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Input (k, i, j) index (or (n, 3) array of them) to model-grid index."""
        idx = np.asarray(index, dtype=np.float64)
        result: npt.NDArray[np.float64] = (idx - np.asarray(self.origin)) / np.asarray(self.step)
        return result


def resample(
    hu: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    spacing_mm: tuple[float, float, float],
    box: Box | None = None,
    target_mm: float = MODEL_SPACING_MM,
) -> tuple[FloatVolume, ModelGrid]:
    """Crop to ``box`` and resample to ``target_mm`` isotropic voxels (HU, float32).

    Axes finer than half the target are first block-averaged by an integer factor (cheap
    anti-aliasing), then everything is linearly interpolated.
    """
    if box is None:
        box = (slice(0, hu.shape[0]), slice(0, hu.shape[1]), slice(0, hu.shape[2]))
    vol = np.asarray(hu[box], dtype=np.float32)
    origin = [float(b.start) for b in box]
    spacing = list(spacing_mm)
    for axis in range(3):
        factor = int(target_mm // spacing[axis])
        if factor >= 2 and vol.shape[axis] >= 2 * factor:
            n = vol.shape[axis] // factor
            whole_blocks = tuple(
                slice(0, n * factor) if a == axis else slice(None) for a in range(3)
            )
            vol = vol[whole_blocks]  # a view: no copy of the volume
            new_shape = (*vol.shape[:axis], n, factor, *vol.shape[axis + 1 :])
            vol = vol.reshape(new_shape).mean(axis=axis + 1, dtype=np.float32)
            origin[axis] += (factor - 1) / 2
            spacing[axis] *= factor
    zoom_step = np.array([target_mm / s for s in spacing])
    out_shape = tuple(
        max(1, int(np.floor((n - 1) / st)) + 1) for n, st in zip(vol.shape, zoom_step, strict=True)
    )
    out = ndimage.affine_transform(
        vol, zoom_step, output_shape=out_shape, order=1, mode="nearest", prefilter=False
    ).astype(np.float32, copy=False)
    step = tuple(float(target_mm / s) for s in spacing_mm)
    grid = ModelGrid(
        origin=(origin[0], origin[1], origin[2]),
        step=(step[0], step[1], step[2]),
        shape=(out_shape[0], out_shape[1], out_shape[2]),
    )
    return out, grid


def lung_zone(model_hu: FloatVolume, dilate_voxels: int = 3) -> npt.NDArray[np.bool_]:
    """Aerated lung on the model grid, dilated so that juxtapleural nodules are inside."""
    voxel_ml = MODEL_SPACING_MM**3 / 1000.0
    lungs = _lung_components(model_hu < AIR_HU, max(1, int(MIN_LUNG_ML / 10.0 / voxel_ml)))
    if dilate_voxels > 0 and lungs.any():
        lungs = ndimage.binary_dilation(lungs, iterations=dilate_voxels)
    return lungs
