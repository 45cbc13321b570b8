"""Rigid registration of two exams of one head: six parameters, normalised cross-correlation,
started from the scanner (LPS) geometry and the head centroids, optimised coarse to fine."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage, optimize

logger = logging.getLogger(__name__)

LEVELS_MM = (6.0, 3.0)
"""Sample spacing of the coarse and the fine level."""
HEAD_FRACTION = 0.15
"""Fixed-image voxels above this fraction of its 99th percentile are sampled."""
MIN_OVERLAP = 0.5
"""At least this fraction of the samples must fall inside the moving volume."""
MIN_CORRELATION = 0.6
"""Below this, the two exams are not considered aligned."""

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Registration:
    """``matrix`` maps the fixed exam's LPS coordinates to the moving exam's."""

    matrix: Matrix
    correlation: float
    """Normalised cross-correlation of the two images at the optimum (1 = identical)."""

    @property
    def aligned(self) -> bool:
        return self.correlation >= MIN_CORRELATION

    def apply(self, points_lps: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """(n, 3) fixed LPS points to moving LPS."""
        result: npt.NDArray[np.float64] = points_lps @ self.matrix[:3, :3].T + self.matrix[:3, 3]
        return result

    def inverse(self) -> Registration:
        inverse: Matrix = np.asarray(np.linalg.inv(self.matrix), dtype=np.float64)
        return Registration(inverse, self.correlation)


def rigid_matrix(params: npt.ArrayLike, centre: npt.NDArray[np.float64]) -> Matrix:
    """Rotation (degrees about x, y, z, applied about ``centre``) then translation (mm)."""
    rx, ry, rz, tx, ty, tz = (float(v) for v in np.asarray(params, dtype=np.float64))
    ax, ay, az = math.radians(rx), math.radians(ry), math.radians(rz)
    mx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    my = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    mz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    rotation = mz @ my @ mx
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = centre - rotation @ centre + np.array([tx, ty, tz])
    return out


def _smoothed(
    array: npt.NDArray[Any], spacing: npt.NDArray[np.float64], level_mm: float
) -> npt.NDArray[np.float32]:
    sigma = [max(0.0, (level_mm / 2.0) / s - 0.5) for s in spacing]
    return np.asarray(
        ndimage.gaussian_filter(np.asarray(array, dtype=np.float32), sigma), dtype=np.float32
    )


def _head_points(
    smoothed: npt.NDArray[np.float32], affine: Matrix, level_mm: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    """LPS points on a ~level_mm grid inside the head, and the image values there."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    strides = [max(1, int(np.rint(level_mm / s))) for s in spacing]
    sub = smoothed[:: strides[0], :: strides[1], :: strides[2]]
    top = float(np.percentile(sub, 99.0))
    idx = np.argwhere(sub > HEAD_FRACTION * top) * np.array(strides)
    values = smoothed[idx[:, 0], idx[:, 1], idx[:, 2]]
    lps = affine @ np.hstack([idx, np.ones((len(idx), 1))]).T
    return lps[:3].T.copy(), values


def _correlation(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else 0.0


class _Objective:
    """Negative correlation of the fixed samples with the moving image under a rigid transform."""

    def __init__(
        self,
        points: npt.NDArray[np.float64],
        values: npt.NDArray[np.float32],
        moving: npt.NDArray[np.float32],
        to_moving_index: Matrix,
        centre: npt.NDArray[np.float64],
    ) -> None:
        self.homogeneous = np.hstack([points, np.ones((len(points), 1))]).T
        self.values = values
        self.moving = moving
        self.to_moving_index = to_moving_index
        self.centre = centre
        self.upper = np.array(moving.shape, dtype=np.float64)[:, None] - 1.0

    def __call__(self, params: npt.NDArray[np.float64]) -> float:
        matrix = self.to_moving_index @ rigid_matrix(params, self.centre)
        coords = (matrix @ self.homogeneous)[:3]
        inside = np.all((coords >= 0.0) & (coords <= self.upper), axis=0)
        if inside.mean() < MIN_OVERLAP:
            return 1.0
        sampled = ndimage.map_coordinates(self.moving, coords[:, inside], order=1, prefilter=False)
        return -_correlation(self.values[inside], sampled.astype(np.float32))


def register_rigid(
    fixed: npt.NDArray[Any],
    fixed_affine: Matrix,
    moving: npt.NDArray[Any],
    moving_affine: Matrix,
) -> Registration:
    """The rigid transform that best maps ``fixed`` onto ``moving`` (both (k, i, j) volumes with
    (k, i, j) -> LPS affines)."""
    fixed_spacing = np.linalg.norm(fixed_affine[:3, :3], axis=0)
    moving_spacing = np.linalg.norm(moving_affine[:3, :3], axis=0)
    to_moving_index: Matrix = np.asarray(np.linalg.inv(moving_affine), dtype=np.float64)
    params = np.zeros(6)
    centre: npt.NDArray[np.float64] | None = None
    best = -1.0
    for level, level_mm in enumerate(LEVELS_MM):
        fixed_s = _smoothed(fixed, fixed_spacing, level_mm)
        moving_s = _smoothed(moving, moving_spacing, level_mm)
        points, values = _head_points(fixed_s, fixed_affine, level_mm)
        if len(points) < 100:
            return Registration(np.eye(4), 0.0)
        if level == 0:
            centre = points.mean(axis=0)
            moving_points, _ = _head_points(moving_s, moving_affine, level_mm)
            if len(moving_points):
                params[3:] = moving_points.mean(axis=0) - centre
        assert centre is not None
        cost = _Objective(points, values, moving_s, to_moving_index, centre)
        result = optimize.minimize(
            cost,
            params,
            method="Powell",
            options={"xtol": 0.05, "ftol": 1e-5, "maxfev": 1500},
        )
        params = np.asarray(result.x, dtype=np.float64)
        best = -float(result.fun)
        logger.debug("registration level %.0f mm: correlation %.3f", level_mm, best)
    assert centre is not None
    return Registration(rigid_matrix(params, centre), best)
