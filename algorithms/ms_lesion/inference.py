"""Runs the exported FLAIR model on a normalised model-grid volume, slice batch by slice batch."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from algorithms.ms_lesion.preprocess import SIZE_DIVISOR

SLICES_PER_BATCH = 8
OUTPUT_CHANNELS = ("lesion", "ventricle", "cortex", "brainstem", "cerebellum")
"""Channel order of the model output (``network.OUTPUT_CHANNELS``, without importing torch)."""


class Session(Protocol):
    """The part of ``onnxruntime.InferenceSession`` used here."""

    def run(self, output_names: Any, input_feed: dict[str, Any]) -> list[Any]: ...


def predict(
    session: Session, input_name: str, image: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Per-pixel probabilities, (channels, slices, rows, columns), for a normalised volume."""
    n, rows, cols = image.shape
    pad_r, pad_c = (-rows) % SIZE_DIVISOR, (-cols) % SIZE_DIVISOR
    out = np.empty((len(OUTPUT_CHANNELS), n, rows, cols), dtype=np.float32)
    for start in range(0, n, SLICES_PER_BATCH):
        batch = image[start : start + SLICES_PER_BATCH]
        if pad_r or pad_c:
            batch = np.pad(batch, ((0, 0), (0, pad_r), (0, pad_c)))
        (probs,) = session.run(None, {input_name: np.ascontiguousarray(batch[:, None])})
        probs = np.asarray(probs, dtype=np.float32)[:, :, :rows, :cols]
        out[:, start : start + len(batch)] = probs.transpose(1, 0, 2, 3)
    return out
