"""Runs the exported nodule model on a normalised model-grid volume (onnxruntime, tiled in z)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

SIZE_DIVISOR = 8
"""The U-Net needs spatial sizes that are multiples of this (three 2x poolings)."""
MAX_TILE_VOXELS = 6_000_000
"""Volumes larger than this are run in overlapping z slabs to bound memory."""
TILE_MARGIN = 32
"""Model-grid voxels of context on each side of a slab that are computed and thrown away."""


class Session(Protocol):
    """The part of ``onnxruntime.InferenceSession`` used here."""

    def run(self, output_names: Any, input_feed: dict[str, Any]) -> list[Any]: ...


def _pad(vol: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    pads = [(0, (-n) % SIZE_DIVISOR) for n in vol.shape]
    if not any(p for _, p in pads):
        return vol
    return np.pad(vol, pads, mode="edge")


def _run_whole(
    session: Session, input_name: str, vol: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    padded = _pad(vol)
    (out,) = session.run(None, {input_name: padded[None, None]})
    prob: npt.NDArray[np.float32] = np.asarray(out, dtype=np.float32)[0, 0]
    return prob[: vol.shape[0], : vol.shape[1], : vol.shape[2]]


def predict(
    session: Session,
    input_name: str,
    vol: npt.NDArray[np.float32],
    max_tile_voxels: int = MAX_TILE_VOXELS,
) -> npt.NDArray[np.float32]:
    """Per-voxel nodule probability for a normalised volume on the model grid."""
    depth = vol.shape[0]
    plane = int(vol.shape[1]) * int(vol.shape[2])
    if depth * plane <= max_tile_voxels:
        return _run_whole(session, input_name, vol)
    core = max(SIZE_DIVISOR, (max_tile_voxels // plane - 2 * TILE_MARGIN) // 8 * 8)
    prob = np.empty(vol.shape, dtype=np.float32)
    for start in range(0, depth, core):
        stop = min(depth, start + core)
        lo, hi = max(0, start - TILE_MARGIN), min(depth, stop + TILE_MARGIN)
        tile = _run_whole(session, input_name, np.ascontiguousarray(vol[lo:hi]))
        prob[start:stop] = tile[start - lo : stop - lo]
    logger.debug("ran %d z slabs of %d slices", -(-depth // core), core)
    return prob


def classify(
    session: Session, input_name: str, patches: npt.NDArray[np.float32], batch: int = 32
) -> npt.NDArray[np.float32]:
    """Stage-2 probability for each (1, P, P, P) patch of ``patches`` (n, 1, P, P, P)."""
    out = np.empty(len(patches), dtype=np.float32)
    for start in range(0, len(patches), batch):
        chunk = np.ascontiguousarray(patches[start : start + batch], dtype=np.float32)
        (prob,) = session.run(None, {input_name: chunk})
        out[start : start + len(chunk)] = np.asarray(prob, dtype=np.float32).reshape(-1)
    return out
