"""Small contract objects for tests that need a StudyInput but no DICOM."""

from __future__ import annotations

import numpy as np

from algorithms.contract import SeriesInput, StudyInput, VolumeGeometry


def tiny_study(modality: str = "CT") -> StudyInput:
    array = np.zeros((4, 8, 8), dtype=np.float32)
    geometry = VolumeGeometry(np.eye(4), (4, 8, 8), "1.2.3")
    series = SeriesInput("1.2.3.4", array, geometry, {"Modality": modality})
    return StudyInput("1.2.3", series)
