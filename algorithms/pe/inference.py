"""Runs the exported embolus model on a model-grid volume (onnxruntime, tiled in z)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

SIZE_DIVISOR = 8
"""The U-Net needs spatial sizes that are multiples of this (three 2x poolings)."""
MAX_TILE_VOXELS = 3_000_000
"""Volumes larger than this are run in overlapping z slabs to bound memory."""
TILE_MARGIN = 16
"""Model-grid voxels of context on each side of a slab that are computed and thrown away."""


class Session(Protocol):
    """The part of ``onnxruntime.InferenceSession`` used here."""

    def run(self, output_names: Any, input_feed: dict[str, Any]) -> list[Any]: ...


def _run_whole(
    session: Session, input_name: str, vol: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    depth, height, width = vol.shape[1:]
    pads = [(0, 0)] + [(0, (-n) % SIZE_DIVISOR) for n in (depth, height, width)]
    padded = np.pad(vol, pads, mode="edge") if any(p for _, p in pads) else vol
    (out,) = session.run(None, {input_name: padded[None]})
    prob: npt.NDArray[np.float32] = np.asarray(out, dtype=np.float32)[0]
    return prob[:, :depth, :height, :width]


def predict(
    session: Session,
    input_name: str,
    vol: npt.NDArray[np.float32],
    max_tile_voxels: int = MAX_TILE_VOXELS,
) -> npt.NDArray[np.float32]:
    """The model's (C, D, H, W) output for a (channels, D, H, W) input on the model grid: for
    the embolus network, the probabilities of embolus, pulmonary artery and pulmonary trunk of
    the (2, D, H, W) normalised volume."""
    depth = vol.shape[1]
    plane = int(vol.shape[2]) * int(vol.shape[3])
    if depth * plane <= max_tile_voxels:
        return _run_whole(session, input_name, vol)
    core = max(SIZE_DIVISOR, (max_tile_voxels // plane - 2 * TILE_MARGIN) // 8 * 8)
    prob: npt.NDArray[np.float32] | None = None
    for start in range(0, depth, core):
        stop = min(depth, start + core)
        lo, hi = max(0, start - TILE_MARGIN), min(depth, stop + TILE_MARGIN)
        tile = _run_whole(session, input_name, np.ascontiguousarray(vol[:, lo:hi]))
        if prob is None:
            prob = np.empty((tile.shape[0], *vol.shape[1:]), dtype=np.float32)
        prob[:, start:stop] = tile[:, start - lo : stop - lo]
    assert prob is not None
    logger.debug("ran %d z slabs of %d slices", -(-depth // core), core)
    return prob
