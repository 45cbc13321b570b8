"""Vessel-aligned views of the second stage's filling-defect candidates.

A partial clot in a small or in-plane artery looks, in any axial ring around it, like a vein
enhanced less than the arteries or the partial-volume edge of a lung vessel (docs/algorithms/
pe.md, "What was tried"). What tells it apart is its own artery: a clot is a stretch darker
than the same artery upstream and downstream. These patches show each candidate as a
radiologist's curved reformat would: two longitudinal planes through the candidate's centre
that contain the local vessel axis (and are perpendicular to each other), 20 mm along the
axis by 8 mm across at 0.5 mm, each as HU scaled to the scan's own trunk enhancement and as
the candidate's mask. With ``scales=2`` the same two planes follow at 1 mm as well, 40 mm
along by 16 mm across: an occlusive clot 8-20 mm long fills most of the first view, and
what tells it from a vein (its enhanced parent artery at one end, the less enhanced tree
beyond the other) lies further along.

The vessel axis is the principal direction of the non-air voxels (above -300 HU) within 5 mm
of the candidate's centre: the long axis of the vessel segment it sits in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

FloatVolume = npt.NDArray[np.float32]
Region = tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]]
"""A candidate: its bounding box on the input grid and its mask inside the box."""

ALONG_MM = np.arange(-10.0, 10.0 + 1e-6, 0.5)
"""Sample positions along the vessel axis (41), at the first scale."""
ACROSS_MM = np.arange(-4.0, 4.0 + 1e-6, 0.5)
"""Sample positions across it, in each plane (17), at the first scale."""
SCALES = (1.0, 2.0)
"""Each scale's sample spacing as a multiple of the first's (0.5 and 1 mm)."""
CHANNELS = 4
"""Per scale: plane 1 HU, plane 1 mask, plane 2 HU, plane 2 mask."""


def channels(scales: int) -> int:
    """Channels of a patch with ``scales`` scales."""
    return CHANNELS * scales


def planes_swapped(scales: int) -> list[int]:
    """The channel order that swaps the two planes at every scale (a mirror image)."""
    return [CHANNELS * s + c for s in range(scales) for c in (2, 3, 0, 1)]


NEIGHBOURHOOD_MM = 5.0
TISSUE_HU = -300.0
CLOT_HU = 40.0
"""HU are shown as (HU - CLOT_HU) / (trunk HU - CLOT_HU): 0 is clot, 1 the enhanced lumen."""
MIN_CONTRAST_HU = 50.0
SCALED_LIMIT = 2.0


def vessel_axis(
    hu: FloatVolume, spacing_mm: npt.NDArray[np.float64], centre: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64] | None:
    """Unit vector (in mm, (k, i, j) order) of the vessel through ``centre`` (voxel index):
    the principal direction of the tissue voxels within ``NEIGHBOURHOOD_MM``; None where
    there are fewer than 5 of them."""
    reach = np.ceil(NEIGHBOURHOOD_MM / spacing_mm).astype(int)
    base = np.floor(centre).astype(int)
    lo = np.maximum(base - reach, 0)
    hi = np.minimum(base + reach + 1, hu.shape)
    crop = hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    offsets = (np.argwhere(crop > TISSUE_HU).astype(np.float64) + lo - centre) * spacing_mm
    offsets = offsets[np.linalg.norm(offsets, axis=1) <= NEIGHBOURHOOD_MM]
    if len(offsets) < 5:
        return None
    _, vectors = np.linalg.eigh(offsets.T @ offsets / len(offsets))
    axis: npt.NDArray[np.float64] = vectors[:, -1]
    return axis


def _across(axis: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], ...]:
    """Two unit vectors perpendicular to ``axis`` and to each other."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    first = np.cross(axis, helper)
    first /= np.linalg.norm(first)
    return first, np.cross(axis, first)


def vessel_patches(
    hu: FloatVolume,
    spacing_mm: tuple[float, float, float],
    regions: Sequence[Region | None],
    trunk_hu: float,
    scales: int = 1,
) -> npt.NDArray[np.float32]:
    """``(len(regions), channels(scales), len(ACROSS_MM), len(ALONG_MM))`` patches; zeros for
    a missing region. ``hu`` is the input volume the regions' boxes index."""
    if not 1 <= scales <= len(SCALES):
        raise ValueError(f"scales must be 1 to {len(SCALES)}, not {scales}")
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    contrast = max(float(trunk_hu) - CLOT_HU, MIN_CONTRAST_HU)
    out = np.zeros(
        (len(regions), channels(scales), len(ACROSS_MM), len(ALONG_MM)), dtype=np.float32
    )
    grids = [np.meshgrid(ALONG_MM * f, ACROSS_MM * f) for f in SCALES[:scales]]
    for n, region in enumerate(regions):
        if region is None:
            continue
        box, mask = region
        start = np.array([b.start for b in box], dtype=np.float64)
        centre = (np.argwhere(mask).astype(np.float64) + start).mean(axis=0)
        axis = vessel_axis(hu, spacing, centre)
        if axis is None:
            axis = np.array([1.0, 0.0, 0.0])  # no vessel around: along the slices' normal
        for scale, (along, across) in enumerate(grids):
            for plane, normal in enumerate(_across(axis)):
                offsets_mm = along[..., None] * axis + across[..., None] * normal
                coords = (centre + offsets_mm / spacing).reshape(-1, 3).T
                values = ndimage.map_coordinates(hu, coords, order=1, mode="nearest")
                scaled = np.clip((values - CLOT_HU) / contrast, -SCALED_LIMIT, SCALED_LIMIT)
                channel = CHANNELS * scale + 2 * plane
                out[n, channel] = scaled.reshape(along.shape)
                inside = ndimage.map_coordinates(
                    mask.astype(np.float32), coords - start[:, None], order=0, mode="constant"
                )
                out[n, channel + 1] = inside.reshape(along.shape)
    return out
