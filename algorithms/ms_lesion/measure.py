"""Measurements of one lesion mask on the input grid: long axis, outline polygon, centre."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage

POLYGON_POINTS = 24
BoolVolume = npt.NDArray[np.bool_]


def long_axis_mm(mask: BoolVolume, spacing: tuple[float, float, float]) -> float:
    """Longest in-plane extent of the mask over all its slices, between outer pixel edges."""
    best = 0.0
    dy, dx = spacing[1], spacing[2]
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        plane = mask[k]
        edge = plane & ~ndimage.binary_erosion(plane)
        pts = np.argwhere(edge).astype(np.float64) * np.array([dy, dx])
        if len(pts) > 300:
            pts = pts[np.linspace(0, len(pts) - 1, 300).astype(int)]
        diff = pts[:, None, :] - pts[None, :, :]
        best = max(best, float(np.sqrt((diff**2).sum(-1)).max()))
    return best + (dy + dx) / 2


def largest_slice(mask: BoolVolume) -> int:
    """The slice with the most mask pixels."""
    return int(np.argmax(mask.sum(axis=(1, 2))))


def outline(plane: BoolVolume) -> tuple[tuple[float, float], ...]:
    """Closed (column, row) polygon around a non-empty 2-D mask: its radial extent on
    POLYGON_POINTS rays from the centroid, half a pixel outside the last inside pixel."""
    ys, xs = np.nonzero(plane)
    if not len(ys):
        raise ValueError("outline: plane must contain at least one mask pixel")
    ci, cj = float(ys.mean()), float(xs.mean())
    steps = np.arange(0.0, max(plane.shape), 0.25)
    pts: list[tuple[float, float]] = []
    for n in range(POLYGON_POINTS):
        a = 2.0 * math.pi * n / POLYGON_POINTS
        rows = np.rint(ci + steps * math.sin(a)).astype(int)
        cols = np.rint(cj + steps * math.cos(a)).astype(int)
        ok = (rows >= 0) & (rows < plane.shape[0]) & (cols >= 0) & (cols < plane.shape[1])
        inside = np.zeros(len(steps), dtype=bool)
        inside[ok] = plane[rows[ok], cols[ok]]
        first_out = int(np.argmin(inside)) if not inside.all() else len(steps)
        r = float(steps[max(first_out - 1, 0)]) + 0.5
        pts.append((round(cj + r * math.cos(a), 2), round(ci + r * math.sin(a), 2)))
    return (*pts, pts[0])
