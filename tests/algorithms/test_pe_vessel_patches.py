"""Vessel-aligned patches of filling-defect candidates: whatever way the artery runs through
the slices, the patch shows it along its length, the clot as a dark stretch in the middle
with enhanced lumen beyond it, and the candidate's mask where the clot is."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from algorithms.pe.vessel_patches import (
    ACROSS_MM,
    ALONG_MM,
    CHANNELS,
    planes_swapped,
    vessel_axis,
    vessel_patches,
)

SPACING = (2.0, 0.8, 0.8)
SHAPE = (40, 100, 100)
LUMEN_HU, CLOT_HU, LUNG_HU, TRUNK_HU = 300.0, 40.0, -850.0, 300.0
RADIUS_MM, CLOT_HALF_LENGTH_MM = 3.0, 3.0


def artery_with_clot(
    direction: tuple[float, float, float],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """A straight enhanced artery through the volume's centre along ``direction`` (mm, k/i/j),
    in lung, blocked over 6 mm of its length at the centre."""
    axis = np.asarray(direction, dtype=np.float64)
    axis /= np.linalg.norm(axis)
    grid = np.moveaxis(np.indices(SHAPE), 0, -1).astype(np.float64)
    offsets = (grid - (np.array(SHAPE) - 1) / 2.0) * np.array(SPACING)
    along = offsets @ axis
    across = np.linalg.norm(offsets - along[..., None] * axis, axis=-1)
    inside = across <= RADIUS_MM
    clot = inside & (np.abs(along) <= CLOT_HALF_LENGTH_MM)
    hu = np.full(SHAPE, LUNG_HU, dtype=np.float32)
    hu[inside] = LUMEN_HU
    hu[clot] = CLOT_HU
    return hu, clot, axis


def region_of(
    mask: npt.NDArray[np.bool_],
) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]]:
    points = np.argwhere(mask)
    lo, hi = points.min(axis=0), points.max(axis=0) + 1
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    return box, mask[box]


def at(mm_along: float, mm_across: float) -> tuple[int, int]:
    """(row, column) of a patch sample."""
    return int(np.argmin(np.abs(ACROSS_MM - mm_across))), int(
        np.argmin(np.abs(ALONG_MM - mm_along))
    )


@pytest.mark.parametrize(
    "direction", [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.5)]
)
def test_the_patch_runs_along_the_artery_with_the_clot_in_the_middle(
    direction: tuple[float, float, float],
) -> None:
    hu, clot, axis = artery_with_clot(direction)
    box, mask = region_of(clot)
    centre = (np.argwhere(mask) + [b.start for b in box]).mean(axis=0)
    found = vessel_axis(hu, np.asarray(SPACING), centre)
    assert found is not None and abs(float(found @ axis)) > 0.95

    [patch] = vessel_patches(hu, SPACING, [(box, mask)], TRUNK_HU)
    assert patch.shape == (CHANNELS, len(ACROSS_MM), len(ALONG_MM))
    for plane in (0, 2):
        values, inside = patch[plane], patch[plane + 1]
        # HU scaled to the trunk: 0 is clot, 1 enhanced lumen; lung is clipped at -2.
        assert values[at(0.0, 0.0)] == pytest.approx(0.0, abs=0.15)
        assert values[at(-8.0, 0.0)] == pytest.approx(1.0, abs=0.15)
        assert values[at(8.0, 0.0)] == pytest.approx(1.0, abs=0.15)
        assert values[at(0.0, 4.0)] == -2.0 and values[at(0.0, -4.0)] == -2.0
        assert inside[at(0.0, 0.0)] == 1.0
        assert inside[at(8.0, 0.0)] == 0.0 and inside[at(0.0, 4.0)] == 0.0


def test_a_missing_region_is_zeros_and_a_candidate_in_air_still_gets_a_patch() -> None:
    hu = np.full(SHAPE, LUNG_HU, dtype=np.float32)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[20, 50, 50] = True
    patches = vessel_patches(hu, SPACING, [None, region_of(mask)], TRUNK_HU)
    assert not patches[0].any()
    assert (patches[1, 0] == -2.0).all() and patches[1, 1][at(0.0, 0.0)] == 1.0


def test_the_second_scale_sees_twice_as_far_along_the_artery() -> None:
    # An occlusive clot fills most of the first view; the second shows what lies beyond it:
    # here the artery enhanced on one side and starved (clot-dark) from 13 mm on the other.
    hu, clot, axis = artery_with_clot((0.0, 1.0, 1.0))
    grid = np.moveaxis(np.indices(SHAPE), 0, -1).astype(np.float64)
    along = ((grid - (np.array(SHAPE) - 1) / 2.0) * np.array(SPACING)) @ axis
    hu[(hu == LUMEN_HU) & (along > 13.0)] = CLOT_HU
    region = region_of(clot)
    [one] = vessel_patches(hu, SPACING, [region], TRUNK_HU)
    [two] = vessel_patches(hu, SPACING, [region], TRUNK_HU, scales=2)
    assert two.shape == (2 * CHANNELS, len(ACROSS_MM), len(ALONG_MM))
    assert np.array_equal(two[:CHANNELS], one)  # the first scale is the one-scale patch
    for plane in (CHANNELS, CHANNELS + 2):
        values, inside = two[plane], two[plane + 1]
        far = sorted((values[at(-8.0, 0.0)], values[at(8.0, 0.0)]))  # 16 mm either side
        assert far[0] == pytest.approx(0.0, abs=0.15)  # the starved side
        assert far[1] == pytest.approx(1.0, abs=0.15)  # the enhanced side
        assert values[at(0.0, 0.0)] == pytest.approx(0.0, abs=0.15)
        assert values[at(0.0, 4.0)] == -2.0  # 8 mm across: lung
        assert inside[at(0.0, 0.0)] == 1.0 and inside[at(4.0, 0.0)] == 0.0
    # the first view ends 10 mm out, before the starved stretch: enhanced lumen both ways
    assert one[0][at(9.5, 0.0)] == pytest.approx(1.0, abs=0.15)
    assert one[0][at(-9.5, 0.0)] == pytest.approx(1.0, abs=0.15)


def test_swapping_the_planes_keeps_each_scale_together() -> None:
    assert planes_swapped(1) == [2, 3, 0, 1]
    assert planes_swapped(2) == [2, 3, 0, 1, 6, 7, 4, 5]
    with pytest.raises(ValueError, match="scales"):
        vessel_patches(np.zeros(SHAPE, np.float32), SPACING, [], TRUNK_HU, scales=3)
