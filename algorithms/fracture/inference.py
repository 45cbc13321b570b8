"""Runs the exported fracture network on one letterboxed network input (onnxruntime)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

INPUT_NAME = "radiograph"
OUTPUT_NAME = "fracture_probability"


class Session(Protocol):
    """The part of ``onnxruntime.InferenceSession`` used here."""

    def run(self, output_names: Any, input_feed: dict[str, Any]) -> list[Any]: ...


def predict(session: Session, canvas: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Fracture-line probability (H/4, W/4) for a (H, W) network input in [0, 1]."""
    (heatmap,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(canvas[None, None])})
    result: npt.NDArray[np.float32] = np.asarray(heatmap, dtype=np.float32)[0, 0]
    return result
