"""The lung nodule detector plugin: input checks, model run and findings for the router."""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from algorithms import codes, packaged_model
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Finding,
    ImageRegion,
    Measurement,
    Qualifier,
    StudyInput,
    Verdict,
)
from algorithms.lung_nodule import fp_reduction, postprocess, preprocess

logger = logging.getLogger(__name__)

PACKAGE = "algorithms.lung_nodule"
MODEL_FILE = "model.onnx"
"""Stage 1: the candidate U-Net."""
FP_MODEL_FILE = "fp_reduction.onnx"
"""Stage 2: the candidate classifier (false-positive reduction)."""
MODEL_CARD = "model.json"
"""Describes both models; the sha256 of each must match."""
MIN_SLICES = 20
MIN_Z_EXTENT_MM = 60.0
MAX_SLICE_SPACING_MM = 5.0
MAX_PIXEL_SPACING_MM = 1.5
MIN_MATRIX = 128
MAX_AXIS_TILT_DEG = 20.0
"""Largest angle between the slice axis and the patient's head-feet axis still called axial."""
PROBABILITY_THRESHOLD = postprocess.PROBABILITY_THRESHOLD
"""The reporting threshold when the model card names none (and for stage 1 alone); the card's
``fp_reduction.operating_threshold``, chosen on validation scans at training time, wins."""


class LungNoduleDetector:
    """Detects lung nodules (3-30 mm) in chest CT: a small 3-D U-Net proposes candidates, a
    small 3-D CNN on a cube around each one decides (false-positive reduction).

    Trained on synthetic data only; a research demonstration, not for clinical use.
    """

    info: ClassVar[AlgorithmInfo] = AlgorithmInfo(
        name="lung_nodule",
        display_name="radrouter Lung Nodule Detector",
        version="0.2.0",
        manufacturer="radrouter project",
        device_uid="2.25.49709042068864137857068135884848193283",
        modalities=frozenset({"CT"}),
        intended_use=(
            "Research and demonstration only: marks candidate solid and part-solid lung "
            "nodules of 3-30 mm on axial chest CT. The model was trained on synthetic CT data "
            "only and has not been validated on patient images. Not for clinical use."
        ),
        max_runtime_s=120.0,
        target=codes.LUNG_NODULE,
        clinical_use=False,
    )

    def __init__(self, use_fp_reduction: bool = True) -> None:
        """``use_fp_reduction=False`` skips stage 2 and reports stage-1 candidates by their peak
        probability (for evaluation only)."""
        self.use_fp_reduction = use_fp_reduction
        self.threshold = PROBABILITY_THRESHOLD
        """A finding is reported when its probability reaches this (set by ``load``)."""
        self._session: Any = None
        self._input_name = "ct"
        self._fp_session: Any = None
        self._fp_input_name = "patch"
        self.providers: list[str] = []

    def load(self, device: str) -> None:
        """Create the two onnxruntime sessions (CUDA first when asked for and available) after
        checking each model file against its sha256 in the model card, and warm them up."""
        card = packaged_model.read_card(PACKAGE, MODEL_CARD)
        fp_card = card.get("fp_reduction") or {}
        model = packaged_model.read_checked(PACKAGE, MODEL_FILE, card.get("sha256"))
        fp_model = packaged_model.read_checked(PACKAGE, FP_MODEL_FILE, fp_card.get("sha256"))
        digest, fp_digest = str(card["sha256"]), str(fp_card["sha256"])
        session = packaged_model.onnx_session(model, device)
        self._input_name = session.get_inputs()[0].name
        warm = np.zeros((1, 1, 16, 16, 16), dtype=np.float32)
        session.run(None, {self._input_name: warm})
        fp_session = packaged_model.onnx_session(fp_model, device)
        self._fp_input_name = fp_session.get_inputs()[0].name
        cube = (1, fp_reduction.CHANNELS, *(fp_reduction.PATCH_SIZE,) * 3)
        fp_session.run(None, {self._fp_input_name: np.zeros(cube, dtype=np.float32)})
        self._session = session
        self._fp_session = fp_session
        if self.use_fp_reduction:
            self.threshold = float(fp_card.get("operating_threshold", PROBABILITY_THRESHOLD))
        self.providers = list(session.get_providers())
        logger.info(
            "lung_nodule models loaded (%s, %s), providers %s",
            digest[:12],
            fp_digest[:12],
            self.providers,
        )

    def run(self, study: StudyInput) -> AlgorithmResult:
        """Detect nodules in ``study.series``; NOT_ASSESSED with a reason for unsuitable input."""
        if self._session is None:
            raise RuntimeError("LungNoduleDetector.run() called before load()")
        series = study.series
        problem = check_input(
            series.header.get("Modality", ""),
            series.array,
            series.geometry.affine,
        )
        if problem:
            logger.info("lung_nodule not assessed: %s", problem)
            return AlgorithmResult(Verdict.NOT_ASSESSED, reason=problem)
        started = time.monotonic()
        spacing = series.geometry.spacing_mm
        hu = series.array
        box = preprocess.find_lung_box(hu, spacing)
        if box is None:
            return AlgorithmResult(
                Verdict.NOT_ASSESSED, reason="No aerated lung found in the volume"
            )
        stage1 = fp_reduction.run_stage1(self._session, self._input_name, hu, spacing, box)
        if self.use_fp_reduction:
            scores = fp_reduction.score_candidates(self._fp_session, self._fp_input_name, stage1)
            probs = [float(p) for p in scores]
        else:
            probs = [c.peak for c in stage1.candidates]
        threshold = self.threshold if study.threshold is None else study.threshold
        kept = [
            n
            for n in postprocess.suppress_duplicates(stage1.candidates, probs)
            if probs[n] >= threshold
        ][: postprocess.MAX_FINDINGS]
        shape = (int(hu.shape[0]), int(hu.shape[1]), int(hu.shape[2]))
        detections = [
            postprocess.measure(
                stage1.prob,
                stage1.labels,
                stage1.candidates[n],
                probs[n],
                stage1.grid,
                shape,
                spacing,
            )
            for n in kept
        ]
        elapsed = time.monotonic() - started
        logger.info(
            "lung_nodule: %d finding(s) of %d candidate(s) in %.1f s (model grid %s)",
            len(detections),
            len(stage1.candidates),
            elapsed,
            stage1.grid.shape,
        )
        if not detections:
            return AlgorithmResult(
                Verdict.ABSENT,
                reason=f"No lung nodule detected (probability threshold {threshold:g})",
            )
        affine = series.geometry.affine
        findings = tuple(
            _finding(d, n, postprocess.side_of(d.centre_voxel, box[2], affine))
            for n, d in enumerate(detections, start=1)
        )
        return AlgorithmResult(
            Verdict.PRESENT,
            findings=findings,
            reason=f"{len(findings)} lung nodule candidate(s) detected",
        )


SIDE_CODES = {"right": codes.RIGHT, "left": codes.LEFT}


def _finding(det: postprocess.Detection, number: int, side: str | None) -> Finding:
    return Finding(
        finding_type=codes.LUNG_NODULE,
        probability=det.probability,
        centre_voxel=det.centre_voxel,
        region=ImageRegion(slice_index=det.slice_index, points=det.outline),
        measurements=(
            Measurement(codes.LONG_AXIS, round(det.long_axis_mm, 1), codes.MILLIMETRE),
            Measurement(codes.VOLUME, round(det.volume_mm3, 1), codes.CUBIC_MILLIMETRE),
        ),
        finding_site=codes.LUNG,
        qualifiers=() if side is None else (Qualifier(codes.LATERALITY, SIDE_CODES[side]),),
        tracking_id=f"Nodule {number}",
        mask=det.mask,
    )


def check_input(
    modality: str, array: npt.NDArray[np.float32], affine: npt.NDArray[np.float64]
) -> str:
    """Why this series cannot be assessed, or "" if it can."""
    if modality.strip().upper() != "CT":
        return f"Modality is {modality or 'missing'!r}; this algorithm needs CT"
    n_slices, rows, cols = array.shape
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(np.isfinite(affine)) or np.any(spacing <= 0):
        return "The volume geometry is invalid (degenerate affine)"
    if n_slices < MIN_SLICES:
        return f"Only {n_slices} slices; at least {MIN_SLICES} are needed"
    if spacing[0] > MAX_SLICE_SPACING_MM:
        return f"Slice spacing {spacing[0]:.1f} mm exceeds {MAX_SLICE_SPACING_MM:.0f} mm"
    z_extent = (n_slices - 1) * spacing[0]
    if z_extent < MIN_Z_EXTENT_MM:
        return f"Scan length {z_extent:.0f} mm is shorter than {MIN_Z_EXTENT_MM:.0f} mm"
    if max(spacing[1], spacing[2]) > MAX_PIXEL_SPACING_MM:
        return f"Pixel spacing {max(spacing[1:]):.2f} mm exceeds {MAX_PIXEL_SPACING_MM} mm"
    if min(rows, cols) < MIN_MATRIX:
        return f"Image matrix {rows}x{cols} is smaller than {MIN_MATRIX}x{MIN_MATRIX}"
    axes = affine[:3, :3] / spacing
    tilt = np.radians(MAX_AXIS_TILT_DEG)
    if abs(axes[2, 0]) < np.cos(tilt) or max(abs(axes[2, 1]), abs(axes[2, 2])) > np.sin(tilt):
        return "The series is not axial (slice axis is not along the patient's head-feet axis)"
    if not np.isfinite(array).all():
        return "The volume contains non-finite values"
    sample = array[:: max(1, n_slices // 16), ::8, ::8]
    if float(np.percentile(sample, 1)) > -500.0 or float(sample.max()) < 0.0:
        return "Pixel values do not look like Hounsfield units of a chest CT"
    return ""
