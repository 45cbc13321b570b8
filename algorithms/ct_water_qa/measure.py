"""CT constancy measurements on a water phantom: CT number of water, noise, uniformity.

As in the daily and monthly constancy tests of CT quality-control programmes (IEC 61223-2-6,
the ACR CT QC manual, AAPM report 233): circular regions of interest on the central slices of
a scan of a uniform water cylinder; one at the centre (mean: CT number of water; standard
deviation: noise), four near the edge at 12, 3, 6 and 9 o'clock (their means against the
centre's: uniformity). Each ROI is 20 mm across (about 300 mm2), the peripheral ones with
their edge 10 mm inside the water; on a small phantom they shrink to fit.

The phantom is found, not assumed: on each slice, the connected region above -500 HU nearest
the image centre (the scanner table is a separate region) gives the centre (its centroid) and
the radius of the water (from its area, less a wall of up to 5 mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

ROI_DIAMETER_MM = 20.0
EDGE_MARGIN_MM = 10.0
WALL_MM = 5.0
"""Left out between the phantom's outline and the water (its wall, partial volume)."""
MIN_PHANTOM_DIAMETER_MM = 100.0
AIR_THRESHOLD_HU = -500.0
CENTRAL_SLICES = 3

PERIPHERAL_POSITIONS = ("12 o'clock", "3 o'clock", "6 o'clock", "9 o'clock")
# (row, column) unit steps from the centre: 12 o'clock is up (anterior, lower row numbers).
_DIRECTIONS = ((-1.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.0, -1.0))


@dataclass(frozen=True)
class Roi:
    """A circular region of interest on one slice, in pixels."""

    name: str
    row: float
    column: float
    radius_px: float

    def outline(self, vertices: int = 24) -> tuple[tuple[float, float], ...]:
        """A closed polygon around the ROI, (column, row) points."""
        angles = np.linspace(0.0, 2.0 * np.pi, vertices, endpoint=False)
        points = [
            (
                float(self.column + self.radius_px * np.cos(a)),
                float(self.row + self.radius_px * np.sin(a)),
            )
            for a in angles
        ]
        return (*points, points[0])


@dataclass(frozen=True)
class WaterPhantomMeasurement:
    water_hu: float
    """Mean CT number in the central ROI (mean over the central slices)."""
    noise_hu: float
    """Standard deviation in the central ROI (root mean square over the central slices)."""
    peripheral_hu: dict[str, float]
    """Mean CT number of each peripheral ROI, by position."""
    phantom_diameter_mm: float
    slice_indices: tuple[int, ...]
    central_roi: Roi
    peripheral_rois: tuple[Roi, ...]

    @property
    def uniformity_hu(self) -> float:
        """The peripheral mean farthest from the centre's, minus the centre's (signed)."""
        differences = [value - self.water_hu for value in self.peripheral_hu.values()]
        return max(differences, key=abs)

    @property
    def worst_peripheral(self) -> str:
        return max(
            self.peripheral_hu, key=lambda name: abs(self.peripheral_hu[name] - self.water_hu)
        )


class NotAWaterPhantomError(ValueError):
    """The series is not something these measurements apply to; the message says why."""


def measure_water_phantom(
    volume_hu: npt.NDArray[np.floating], pixel_spacing_mm: tuple[float, float]
) -> WaterPhantomMeasurement:
    """Measure ``volume_hu`` (slices, rows, columns; CT numbers) with square-enough pixels of
    ``pixel_spacing_mm`` (row, column). Raises NotAWaterPhantomError with the reason."""
    if volume_hu.ndim != 3 or volume_hu.shape[0] < 1:
        raise NotAWaterPhantomError(f"expected a stack of slices, got shape {volume_hu.shape}")
    row_mm, column_mm = (float(v) for v in pixel_spacing_mm)
    if row_mm <= 0 or column_mm <= 0 or abs(row_mm - column_mm) > 0.01 * max(row_mm, column_mm):
        raise NotAWaterPhantomError(f"pixels are not square ({row_mm:g} x {column_mm:g} mm)")
    count = min(CENTRAL_SLICES, volume_hu.shape[0])
    first = (volume_hu.shape[0] - count) // 2
    indices = tuple(range(first, first + count))
    slices = [np.asarray(volume_hu[k], dtype=np.float64) for k in indices]
    centre_row, centre_column, outline_radius_px = _find_phantom(slices[len(slices) // 2])
    diameter_mm = 2.0 * outline_radius_px * row_mm
    if diameter_mm < MIN_PHANTOM_DIAMETER_MM:
        raise NotAWaterPhantomError(
            f"the object at the centre is {diameter_mm:.0f} mm across, smaller than a water "
            f"phantom ({MIN_PHANTOM_DIAMETER_MM:.0f} mm or more)"
        )
    water_radius_px = outline_radius_px - WALL_MM / row_mm
    roi_radius_px = min(ROI_DIAMETER_MM / 2.0 / row_mm, 0.15 * water_radius_px)
    offset_px = water_radius_px - EDGE_MARGIN_MM / row_mm - roi_radius_px
    central = Roi("centre", centre_row, centre_column, roi_radius_px)
    peripheral = tuple(
        Roi(name, centre_row + dr * offset_px, centre_column + dc * offset_px, roi_radius_px)
        for name, (dr, dc) in zip(PERIPHERAL_POSITIONS, _DIRECTIONS, strict=True)
    )
    centre_values = [_values(plane, central) for plane in slices]
    water = float(np.mean([v.mean() for v in centre_values]))
    if abs(water) > 200.0:
        raise NotAWaterPhantomError(f"the centre reads {water:.0f} HU: not water")
    noise = float(np.sqrt(np.mean([v.var(ddof=1) for v in centre_values])))
    peripheral_hu = {
        roi.name: float(np.mean([_values(plane, roi).mean() for plane in slices]))
        for roi in peripheral
    }
    return WaterPhantomMeasurement(
        water_hu=water,
        noise_hu=noise,
        peripheral_hu=peripheral_hu,
        phantom_diameter_mm=diameter_mm,
        slice_indices=indices,
        central_roi=central,
        peripheral_rois=peripheral,
    )


def _find_phantom(plane: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    """(row, column, radius) in pixels of the object nearest the image centre."""
    labels, count = ndimage.label(plane > AIR_THRESHOLD_HU)
    if count == 0:
        raise NotAWaterPhantomError("nothing but air on the central slice")
    rows, columns = plane.shape
    centre = np.array([(rows - 1) / 2.0, (columns - 1) / 2.0])
    best: tuple[float, int] | None = None
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        part = labels[box] == number
        filled = ndimage.binary_fill_holes(part)
        if filled.sum() < 100:
            continue
        inside = centre - np.array([box[0].start, box[1].start])
        r, c = round(float(inside[0])), round(float(inside[1]))
        covers = 0 <= r < filled.shape[0] and 0 <= c < filled.shape[1] and bool(filled[r, c])
        origin = np.array([box[0].start, box[1].start], dtype=np.float64)
        centroid = np.array(ndimage.center_of_mass(filled)) + origin
        distance = 0.0 if covers else float(np.hypot(*(centroid - centre)))
        if best is None or distance < best[0]:
            best = (distance, number)
    if best is None:
        raise NotAWaterPhantomError("no object on the central slice")
    mask = ndimage.binary_fill_holes(labels == best[1])
    row, column = ndimage.center_of_mass(mask)
    radius = float(np.sqrt(mask.sum() / np.pi))
    return float(row), float(column), radius


def _values(plane: npt.NDArray[np.float64], roi: Roi) -> npt.NDArray[np.float64]:
    """The pixels whose centres lie inside ``roi``."""
    rows, columns = plane.shape
    top = max(int(np.floor(roi.row - roi.radius_px)), 0)
    bottom = min(int(np.ceil(roi.row + roi.radius_px)) + 1, rows)
    left = max(int(np.floor(roi.column - roi.radius_px)), 0)
    right = min(int(np.ceil(roi.column + roi.radius_px)) + 1, columns)
    r, c = np.mgrid[top:bottom, left:right]
    inside = (r - roi.row) ** 2 + (c - roi.column) ** 2 <= roi.radius_px**2
    values: npt.NDArray[np.float64] = plane[top:bottom, left:right][inside]
    if values.size < 10:
        raise NotAWaterPhantomError(f"the {roi.name} ROI falls outside the image")
    return values
