"""A synthetic study that a manifest's model accepts, for latency benchmarks and smoke tests."""

from __future__ import annotations

import numpy as np

from algorithms.contract import SeriesInput, StudyInput, VolumeGeometry
from algorithms.manifest.schema import Manifest, ProcessingMode

MATRIX = 256
"""Rows and columns of the synthetic images."""
DEFAULT_SLICES = 48
PIXEL_MM = 0.8
BACKGROUND = -1000.0
BODY = 40.0
BLOB = 300.0
BLOB_RADIUS_MM = 10.0


def example_study(manifest: Manifest, seed: int = 0) -> StudyInput:
    """An ellipse of soft tissue in air with one bright sphere in its middle, plus noise, in
    the first accepted modality, body part and photometric interpretation."""
    accepts = manifest.accepts
    if manifest.preprocessing.mode is ProcessingMode.IMAGE:
        slices = 1
    else:
        slices = max(accepts.min_slices, DEFAULT_SLICES)
        if accepts.max_slices is not None:
            slices = min(slices, accepts.max_slices)
    thickness = min(2.0, accepts.max_slice_thickness_mm or 2.0)
    spacing = (thickness, PIXEL_MM, PIXEL_MM)
    z, r, c = np.meshgrid(
        (np.arange(slices) - (slices - 1) / 2) * spacing[0],
        (np.arange(MATRIX) - (MATRIX - 1) / 2) * spacing[1],
        (np.arange(MATRIX) - (MATRIX - 1) / 2) * spacing[2],
        indexing="ij",
    )
    half = MATRIX * PIXEL_MM / 2
    array = np.full((slices, MATRIX, MATRIX), BACKGROUND, dtype=np.float32)
    array[(r / (0.7 * half)) ** 2 + (c / (0.9 * half)) ** 2 <= 1.0] = BODY
    array[z**2 + r**2 + c**2 <= BLOB_RADIUS_MM**2] = BLOB
    array += np.random.default_rng(seed).normal(0.0, 10.0, array.shape).astype(np.float32)
    affine = np.array(
        [
            [0.0, 0.0, spacing[2], -half],
            [0.0, spacing[1], 0.0, -half],
            [spacing[0], 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    header = {
        "Modality": accepts.modalities[0],
        "SliceThickness": f"{thickness:g}",
        "ManufacturerModelName": "Synthetic",
    }
    if accepts.body_parts:
        header["BodyPartExamined"] = accepts.body_parts[0].upper()
    header["PhotometricInterpretation"] = (
        accepts.photometric[0].upper() if accepts.photometric else "MONOCHROME2"
    )
    geometry = VolumeGeometry(affine, (slices, MATRIX, MATRIX), f"2.25.{seed}1")
    series = SeriesInput(f"2.25.{seed}2", array, geometry, header)
    return StudyInput(f"2.25.{seed}3", series)
