"""The long-bone fracture detector plugin: input checks, model run, boxes and triage."""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import numpy as np

from algorithms import codes, packaged_model
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Code,
    Finding,
    ImageRegion,
    SeriesInput,
    StudyInput,
    Verdict,
)
from algorithms.fracture import pipeline, postprocess

logger = logging.getLogger(__name__)

PACKAGE = "algorithms.fracture"
MODEL_FILE = "model.onnx"
MODEL_CARD = "model.json"
MODALITIES = frozenset({"CR", "DX"})
MIN_MATRIX = 256
"""Radiographs smaller than this (pixels, short side) are not assessed."""
PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2"})

SITE_BY_BODY_PART: dict[str, Code | None] = {
    "LEG": codes.LOWER_LEG,
    "LOWERLEG": codes.LOWER_LEG,
    "TIBIA": codes.TIBIA,
    "FIBULA": codes.FIBULA,
    "FOREARM": codes.FOREARM,
    "RADIUS": codes.RADIUS,
    "ULNA": codes.ULNA,
    "ARM": codes.UPPER_ARM,
    "UPPERARM": codes.UPPER_ARM,
    "HUMERUS": codes.HUMERUS,
    "THIGH": codes.THIGH,
    "FEMUR": codes.FEMUR,
    "EXTREMITY": None,
    "LOWERLIMB": None,
    "UPPERLIMB": None,
}
"""BodyPartExamined values of long-bone views (spaces and underscores ignored), with the
finding site they give; any other non-empty value is not assessed."""


def _body_part_key(value: str) -> str:
    return "".join(value.upper().split()).replace("_", "")


class FractureDetector:
    """Marks suspected fractures of long-bone shafts on radiographs with a small 2-D
    CenterNet-style detector, and triages the study (suspected fracture / low risk).

    Trained on synthetic data only; a research demonstration, not for clinical use.
    """

    info: ClassVar[AlgorithmInfo] = AlgorithmInfo(
        name="fracture",
        display_name="radrouter Long-Bone Fracture Detector",
        version="0.1.0",
        manufacturer="radrouter project",
        device_uid="2.25.269931778039284529116356588704861967560",
        modalities=MODALITIES,
        intended_use=(
            "Research and demonstration only: marks suspected fractures of the shafts of the "
            "long bones (femur, tibia/fibula, humerus, radius/ulna) on single radiographs (CR, "
            "DX) and triages the study as suspected fracture or low risk. The model was "
            "trained on synthetic radiographs only and has not been validated on patient "
            "images. Not for clinical use."
        ),
        max_runtime_s=60.0,
        target=codes.FRACTURE,
        clinical_use=False,
    )

    def __init__(self) -> None:
        self.session: Any = None
        """The onnxruntime session, once loaded."""
        self.threshold = 0.5
        """The default operating point, read from the model card at load."""
        self.providers: list[str] = []

    def load(self, device: str) -> None:
        """Check the model against its card, create the onnxruntime session, warm up."""
        card = packaged_model.read_card(PACKAGE, MODEL_CARD)
        model = packaged_model.read_checked(PACKAGE, MODEL_FILE, card.get("sha256"))
        digest = str(card["sha256"])
        threshold = float(card["operating_point"]["threshold"])
        if not 0.0 < threshold < 1.0:
            raise RuntimeError(
                f"{MODEL_CARD} operating_point.threshold {threshold} is not in (0, 1)"
            )
        session = packaged_model.onnx_session(model, device)
        size = int(card["input"]["working_size"])
        session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, size, size), np.float32)})
        self.session = session
        self.threshold = threshold
        self.providers = list(session.get_providers())
        logger.info(
            "fracture model loaded (%s), operating point %.3f, providers %s",
            digest[:12],
            threshold,
            self.providers,
        )

    def run(self, study: StudyInput) -> AlgorithmResult:
        """Detect fractures on the radiograph; NOT_ASSESSED with a reason for unsuitable input."""
        if self.session is None:
            raise RuntimeError("FractureDetector.run() called before load()")
        series = study.series
        problem = check_input(series)
        if problem:
            logger.info("fracture not assessed: %s", problem)
            return AlgorithmResult(Verdict.NOT_ASSESSED, reason=problem)
        threshold = operating_point(study, self.threshold)
        photometric = series.header.get("PhotometricInterpretation", "MONOCHROME2")
        started = time.monotonic()
        result = pipeline.assess(self.session, series.array[0], photometric, threshold)
        if result.value_spread <= 0.0:
            return AlgorithmResult(
                Verdict.NOT_ASSESSED, reason="The image has no contrast (all pixels equal)"
            )
        logger.info(
            "fracture: probability %.3f, %d box(es) at operating point %.3f in %.2f s",
            result.probability,
            len(result.boxes),
            threshold,
            time.monotonic() - started,
        )
        probability = round(result.probability, 4)
        if result.probability < threshold:
            return AlgorithmResult(
                Verdict.ABSENT,
                reason=(
                    "Low risk: no fracture of the long-bone shafts detected (fracture "
                    f"probability {probability:.3f} < operating point {threshold:.3f})"
                ),
                probability=probability,
            )
        site = SITE_BY_BODY_PART.get(_body_part_key(series.header.get("BodyPartExamined", "")))
        findings = tuple(
            _finding(box, number, site) for number, box in enumerate(result.boxes, start=1)
        )
        return AlgorithmResult(
            Verdict.PRESENT,
            findings=findings,
            reason=(
                f"Suspected fracture: {len(findings)} region(s) marked (fracture probability "
                f"{probability:.3f} >= operating point {threshold:.3f})"
            ),
            probability=probability,
        )


def operating_point(study: StudyInput, default: float) -> float:
    """The study's own threshold when the router sets one, else ``default``."""
    threshold = getattr(study, "threshold", None)
    if threshold is None:
        return default
    value = float(threshold)
    if not 0.0 < value < 1.0:
        raise ValueError(f"StudyInput.threshold {value} must be in (0, 1)")
    return value


def _finding(box: postprocess.Box, number: int, site: Code | None) -> Finding:
    row, col = box.centre
    return Finding(
        finding_type=codes.FRACTURE,
        probability=round(box.probability, 4),
        centre_voxel=(0.0, row, col),
        region=ImageRegion(slice_index=0, points=box.outline()),
        finding_site=site,
        tracking_id=f"Fracture {number}",
    )


def check_input(series: SeriesInput) -> str:
    """Why this series cannot be assessed, or "" if it can."""
    header = series.header
    modality = header.get("Modality", "").strip().upper()
    if modality not in MODALITIES:
        return (
            f"Modality is {modality or 'missing'!r}; this algorithm needs a radiograph (CR or DX)"
        )
    body_part = header.get("BodyPartExamined", "").strip()
    if body_part and _body_part_key(body_part) not in SITE_BY_BODY_PART:
        return (
            f"BodyPartExamined is {body_part!r}: not a long-bone radiograph (this algorithm "
            "assesses the shafts of femur, tibia/fibula, humerus and radius/ulna)"
        )
    photometric = header.get("PhotometricInterpretation", "MONOCHROME2").strip().upper()
    if photometric not in PHOTOMETRIC:
        return f"PhotometricInterpretation {photometric!r} is not MONOCHROME1 or MONOCHROME2"
    images, rows, cols = series.array.shape
    if images != 1:
        return f"The series holds {images} images; this algorithm reads one radiograph"
    if min(rows, cols) < MIN_MATRIX:
        return f"Image matrix {rows}x{cols} is smaller than {MIN_MATRIX}x{MIN_MATRIX}"
    if not np.isfinite(series.array).all():
        return "The image contains non-finite values"
    return ""
