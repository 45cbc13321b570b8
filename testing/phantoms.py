"""Generated CT water-phantom scans with a known error: the test data of the CT constancy test
(``algorithms.ct_water_qa``) and of the router's QA routing.

A water cylinder (acrylic wall) on the scanner table, axial slices, CT numbers in HU:
``bias_hu`` shifts the water's CT number; ``cupping_hu`` is a quadratic radial profile, the
water at the inside of the wall reading ``cupping_hu`` more than at the centre (negative:
capping), as beam hardening and a miscalibrated bowtie give; ``noise_hu`` is white Gaussian
noise added to every pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from testing.dicom_tools import make_ct_slices

AIR_HU = -1000.0
WALL_HU = 120.0
TABLE_HU = 200.0


@dataclass(frozen=True)
class WaterPhantom:
    """What is generated; every length in mm."""

    bias_hu: float = 0.0
    cupping_hu: float = 0.0
    noise_hu: float = 5.0
    diameter_mm: float = 200.0
    wall_mm: float = 3.0
    slices: int = 5
    size: int = 512
    pixel_mm: float = 0.6
    slice_mm: float = 5.0
    seed: int = 0

    @property
    def water_radius_mm(self) -> float:
        return self.diameter_mm / 2.0 - self.wall_mm

    def expected_peripheral_offset_hu(self, roi_centre_mm: float, roi_radius_mm: float) -> float:
        """Mean of the cupping profile over a disk of ``roi_radius_mm`` centred
        ``roi_centre_mm`` from the centre, minus the same over a disk at the centre."""
        scale = self.cupping_hu / self.water_radius_mm**2
        return scale * (roi_centre_mm**2 + roi_radius_mm**2 / 2.0) - scale * roi_radius_mm**2 / 2.0


def water_phantom_hu(phantom: WaterPhantom) -> npt.NDArray[np.float32]:
    """The scan as CT numbers, (slices, rows, columns)."""
    rng = np.random.default_rng(phantom.seed)
    centre = (phantom.size - 1) / 2.0
    rows, columns = np.mgrid[0 : phantom.size, 0 : phantom.size]
    radius_mm = np.hypot(rows - centre, columns - centre) * phantom.pixel_mm
    outer = phantom.diameter_mm / 2.0
    inner = phantom.water_radius_mm
    plane = np.full((phantom.size, phantom.size), AIR_HU)
    plane[radius_mm <= outer] = WALL_HU
    water = radius_mm <= inner
    plane[water] = phantom.bias_hu + phantom.cupping_hu * (radius_mm[water] / inner) ** 2
    table_top = centre + (outer + 15.0) / phantom.pixel_mm
    table = (rows >= table_top) & (rows <= table_top + 20.0 / phantom.pixel_mm)
    plane[table] = TABLE_HU
    volume = np.repeat(plane[np.newaxis], phantom.slices, axis=0)
    volume = volume + rng.normal(0.0, phantom.noise_hu, volume.shape)
    return volume.astype(np.float32)


def write_water_phantom_series(
    folder: Path,
    phantom: WaterPhantom,
    *,
    study_description: str = "DAILY QA WATER PHANTOM",
    patient_name: str = "QA^CT1",
    body_part: str = "PHANTOM",
) -> list[Path]:
    """The scan as CT Image Storage files (one new study), named as a CT's daily QA scan is:
    the signs ``qa.signs`` looks for. Returns the paths."""
    volume = water_phantom_hu(phantom)
    slices = make_ct_slices(
        phantom.slices,
        rows=phantom.size,
        cols=phantom.size,
        spacing=(phantom.slice_mm, phantom.pixel_mm, phantom.pixel_mm),
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds, plane in zip(slices, volume, strict=True):
        stored = np.clip(np.round(plane - float(ds.RescaleIntercept)), -32768, 32767)
        ds.PixelData = stored.astype(np.int16).tobytes()
        ds.PatientName, ds.PatientID = patient_name, "QA-CT1"
        ds.StudyDescription = study_description
        ds.SeriesDescription = "Water phantom 5 mm"
        ds.BodyPartExamined = body_part
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
