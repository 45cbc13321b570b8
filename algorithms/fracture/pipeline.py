"""From a radiograph's pixels to a study-level fracture probability and boxes (no DICOM)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from algorithms.fracture import inference, postprocess, preprocess


@dataclass(frozen=True)
class Assessment:
    """The detector's answer for one radiograph."""

    probability: float
    """Study-level fracture probability (the strongest heatmap cell on the image)."""
    boxes: tuple[postprocess.Box, ...]
    """Boxes at or above the operating point, strongest first, in input pixels."""
    value_spread: float
    """Difference between the 99.5th and 0.5th percentile of the input (0: no contrast)."""


def assess(
    session: inference.Session,
    pixels: npt.NDArray[np.generic],
    photometric: str,
    threshold: float,
    size: int = preprocess.WORKING_SIZE,
) -> Assessment:
    """Window, letterbox, run the detector and decode boxes at ``threshold``."""
    canvas, letterbox, spread = preprocess.prepare(pixels, photometric, size)
    if spread <= 0.0:
        return Assessment(0.0, (), 0.0)
    heatmap = inference.predict(session, canvas)
    valid = postprocess.valid_cells(letterbox, (heatmap.shape[0], heatmap.shape[1]))
    probability = postprocess.study_probability(heatmap, valid)
    boxes = postprocess.decode(heatmap, letterbox, threshold)
    return Assessment(probability, tuple(boxes), spread)
