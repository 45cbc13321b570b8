"""Crop to the chest, resample to the model grid and map HU to the network's two windows
(shared by training and inference, numpy/scipy only)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from algorithms.lung_nodule.preprocess import ModelGrid, find_lung_box, resample

__all__ = [
    "LUNG_WINDOW",
    "MODEL_SPACING_MM",
    "VASCULAR_WINDOW",
    "ModelGrid",
    "find_lung_box",
    "normalise",
    "resample",
    "resample_labels",
]

MODEL_SPACING_MM = 2.0
"""Isotropic voxel size of the model grid: segmental arteries (4-8 mm) are 2-4 voxels wide;
a 40-voxel patch sees 80 mm, enough to tell the pulmonary trunk from the aorta."""
LUNG_WINDOW = (-1000.0, 400.0)
VASCULAR_WINDOW = (-150.0, 650.0)
"""HU are clipped to each window and mapped linearly to [-1, 1]: one input channel each. The
vascular window keeps the contrast between clot (20-70 HU) and enhanced blood (100-500 HU)."""


def _window(hu: npt.NDArray[np.float32], window: tuple[float, float]) -> npt.NDArray[np.float32]:
    lo, hi = window
    out = np.clip(hu, lo, hi)
    out -= (lo + hi) / 2
    out *= 2.0 / (hi - lo)
    return out


def normalise(
    hu: npt.NDArray[np.floating] | npt.NDArray[np.integer],
) -> npt.NDArray[np.float32]:
    """(D, H, W) HU to the (2, D, H, W) network input."""
    vol = np.asarray(hu, dtype=np.float32)
    return np.stack([_window(vol, LUNG_WINDOW), _window(vol, VASCULAR_WINDOW)])


def resample_labels(labels: npt.NDArray[np.integer], grid: ModelGrid) -> npt.NDArray[np.uint8]:
    """Nearest-neighbour resampling of a label volume onto ``grid`` (made by ``resample``)."""
    axes = [
        np.clip(np.rint(grid.origin[a] + np.arange(n) * grid.step[a]), 0, labels.shape[a] - 1)
        for a, n in enumerate(grid.shape)
    ]
    index = np.ix_(*(ax.astype(np.intp) for ax in axes))
    return np.asarray(labels[index], dtype=np.uint8)
