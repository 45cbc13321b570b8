"""Stage 2 (false-positive reduction): cubes around stage-1 candidates for the candidate
classifier (numpy only; shared by training and inference).

A cube has two channels on the model grid: the normalised CT (the U-Net's input) and the
U-Net's probability map, so the classifier sees both the anatomy and what stage 1 marked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from algorithms.lung_nodule import inference, postprocess, preprocess

PATCH_SIZE = 32
"""Edge of the classifier's input cube in model-grid voxels (32 x 1.5 mm = 48 mm)."""
CANDIDATE_THRESHOLD = 0.5
"""Stage-1 voxel probability that forms candidate components for stage 2."""
CANDIDATE_MIN_PEAK = 0.8
"""A component is a candidate when its stage-1 peak reaches this (a lower bar, 0.3, kept ~5 %
more nodules on validation scans but 5x more candidates to reject)."""
MAX_CANDIDATES = 128
"""At most this many candidates (strongest stage-1 peak first) are classified per scan."""
CHANNELS = 2
"""Classifier input channels: normalised CT, stage-1 probability."""


def extract_patches(
    vol: npt.NDArray[np.float32],
    centres: npt.ArrayLike,
    size: int = PATCH_SIZE,
) -> npt.NDArray[np.float32]:
    """Cubes of ``size`` voxels of ``vol`` (normalised, model grid) around each centre.

    The centre voxel (rounded, and clipped into the volume) lands at index ``size // 2`` on
    every axis; parts outside the volume repeat its edge. Returns (n, 1, size, size, size).
    """
    pts = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    out = np.empty((len(pts), 1, size, size, size), dtype=np.float32)
    shape = np.array(vol.shape)
    for n, c in enumerate(pts):
        lo = np.clip(np.rint(c).astype(int), 0, shape - 1) - size // 2
        src_lo = np.maximum(lo, 0)
        src_hi = np.minimum(lo + size, shape)
        cube = vol[src_lo[0] : src_hi[0], src_lo[1] : src_hi[1], src_lo[2] : src_hi[2]]
        before = src_lo - lo
        pads = [(int(b), int(size - b - s)) for b, s in zip(before, cube.shape, strict=True)]
        out[n, 0] = np.pad(cube, pads, mode="edge") if any(a or b for a, b in pads) else cube
    return out


@dataclass(frozen=True)
class Stage1:
    """Stage 1 of one scan: the model grid, its input, the probability map and candidates."""

    grid: preprocess.ModelGrid
    volume: npt.NDArray[np.float32]
    """Normalised CT on the model grid (the U-Net's input, and what patches are cut from)."""
    prob: npt.NDArray[np.float32]
    lungs: npt.NDArray[np.bool_]
    """Aerated lung, dilated (``preprocess.lung_zone``); candidates must touch it."""
    labels: npt.NDArray[np.int32]
    candidates: list[postprocess.Candidate]
    """Components at ``CANDIDATE_THRESHOLD`` touching the lungs with a peak of at least
    ``CANDIDATE_MIN_PEAK``, strongest first, at most ``MAX_CANDIDATES``."""


def run_stage1(
    session: inference.Session,
    input_name: str,
    hu: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    spacing: tuple[float, float, float],
    box: preprocess.Box,
) -> Stage1:
    """Resample the lung box to the model grid, run the U-Net and list candidate components."""
    model_hu, grid = preprocess.resample(hu, spacing, box)
    volume = preprocess.normalise(model_hu)
    prob = inference.predict(session, input_name, volume)
    allowed = preprocess.lung_zone(model_hu)
    labels, found = postprocess.find_candidates(prob, allowed, CANDIDATE_THRESHOLD)
    candidates = [c for c in found if c.peak >= CANDIDATE_MIN_PEAK][:MAX_CANDIDATES]
    return Stage1(grid, volume, prob, allowed, labels, candidates)


def candidate_cubes(
    stage1: Stage1, centres: npt.ArrayLike, size: int = PATCH_SIZE
) -> npt.NDArray[np.float32]:
    """(n, CHANNELS, size, size, size) cubes of CT and stage-1 probability around ``centres``
    (model-grid k, i, j)."""
    ct = extract_patches(stage1.volume, centres, size)
    prob = extract_patches(stage1.prob, centres, size)
    return np.concatenate([ct, prob], axis=1)


def score_candidates(
    session: inference.Session, input_name: str, stage1: Stage1
) -> npt.NDArray[np.float32]:
    """Stage-2 probability of each stage-1 candidate."""
    if not stage1.candidates:
        return np.zeros(0, dtype=np.float32)
    cubes = candidate_cubes(stage1, [c.centre for c in stage1.candidates])
    return inference.classify(session, input_name, cubes)
