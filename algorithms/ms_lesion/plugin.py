"""The MS lesion plugin: input checks, model run on the current (and prior) FLAIR, change since
the prior, and findings for the router."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, ClassVar

import numpy as np

from algorithms import codes, packaged_model
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Code,
    Finding,
    ImageRegion,
    Measurement,
    PriorStudy,
    Qualifier,
    SeriesInput,
    StudyInput,
    Verdict,
)
from algorithms.ms_lesion import change, inference, inputs, postprocess, preprocess
from algorithms.ms_lesion.registration import register_rigid

logger = logging.getLogger(__name__)

PACKAGE = "algorithms.ms_lesion"
MODEL_FILE = "model.onnx"
MODEL_CARD = "model.json"
MIN_VENTRICLE_ML = 1.0
"""Less recognised ventricle than this: no brain FLAIR the model can read."""
MAX_VENTRICLE_LEVEL = 0.5
"""Median ventricle signal (1 = brain tissue) above this: CSF is not suppressed, not FLAIR."""
MAX_FINDINGS = 60
"""Lesions reported one by one (largest first); the study-level count includes all."""

SITE_CODES: dict[postprocess.Site, Code] = {
    postprocess.Site.PERIVENTRICULAR: codes.CEREBRAL_WHITE_MATTER,
    postprocess.Site.JUXTACORTICAL: codes.CEREBRAL_WHITE_MATTER,
    postprocess.Site.DEEP: codes.CEREBRAL_WHITE_MATTER,
    postprocess.Site.BRAINSTEM: codes.BRAIN_STEM,
    postprocess.Site.CEREBELLUM: codes.CEREBELLUM,
}
CHANGE_CODES: dict[change.Change, Code] = {
    change.Change.NEW: codes.NEW,
    change.Change.ENLARGING: codes.INCREASED,
    change.Change.STABLE: codes.STABLE,
    change.Change.DECREASED: codes.DECREASED,
}


class NotAssessedError(Exception):
    """The series cannot be assessed; the message is the human-readable reason."""


class MSLesionSegmenter:
    """Segments hyperintense multiple sclerosis lesions on brain FLAIR and, given a prior exam,
    marks each lesion new, enlarging, stable or decreased.

    Trained on synthetic data only; a research demonstration, not for clinical use.
    """

    info: ClassVar[AlgorithmInfo] = AlgorithmInfo(
        name="ms_lesion",
        display_name="radrouter MS Lesion Segmentation",
        version="0.1.0",
        manufacturer="radrouter project",
        device_uid="2.25.332682837780122532876291259885816834301",
        modalities=frozenset({"MR"}),
        intended_use=(
            "Research and demonstration only: outlines FLAIR-hyperintense white matter lesions "
            "of multiple sclerosis on brain MRI (2-D axial or 3-D FLAIR), measures each and, "
            "with a prior FLAIR, marks new and enlarging lesions. The model was trained on "
            "synthetic FLAIR images only and has not been validated on patient images. "
            "Not for clinical use."
        ),
        max_runtime_s=300.0,
        target=codes.DEMYELINATION,
        clinical_use=False,
    )

    def __init__(self) -> None:
        self._session: Any = None
        self._input_name = "flair"
        self.providers: list[str] = []

    def load(self, device: str) -> None:
        """Create the onnxruntime session (CUDA first when asked for and available) after
        checking the weights against the model card, and warm it up."""
        card = packaged_model.read_card(PACKAGE, MODEL_CARD)
        model = packaged_model.read_checked(PACKAGE, MODEL_FILE, card.get("sha256"))
        digest = str(card["sha256"])
        session = packaged_model.onnx_session(model, device)
        self._input_name = session.get_inputs()[0].name
        session.run(None, {self._input_name: np.zeros((1, 1, 32, 32), dtype=np.float32)})
        self._session = session
        self.providers = list(session.get_providers())
        logger.info("ms_lesion model loaded (%s), providers %s", digest[:12], self.providers)

    # -- one exam -----------------------------------------------------------------------------

    def segment(self, series: SeriesInput, threshold: float) -> postprocess.Segmentation:
        """Check and segment one series; raises NotAssessedError with the reason."""
        if self._session is None:
            raise RuntimeError("MSLesionSegmenter used before load()")
        problem = inputs.check_header(series.header) or inputs.check_geometry(
            series.array, series.geometry.affine
        )
        if problem:
            raise NotAssessedError(problem)
        prepared = preprocess.prepare(series.array, series.geometry.affine)
        if prepared is None:
            raise NotAssessedError("No head found in the volume")
        probs = inference.predict(self._session, self._input_name, prepared.image)
        segmentation = postprocess.segment(
            probs,
            prepared.image,
            prepared.grid,
            series.geometry.affine,
            series.geometry.shape,
            threshold,
        )
        problem = _check_image(segmentation)
        if problem:
            raise NotAssessedError(problem)
        return segmentation

    # -- the study ----------------------------------------------------------------------------

    def run(self, study: StudyInput) -> AlgorithmResult:
        """Lesions of ``study.series``; with priors, their change since the most recent usable
        prior. NOT_ASSESSED with a reason for unsuitable input."""
        if self._session is None:
            raise RuntimeError("MSLesionSegmenter.run() called before load()")
        threshold = study.threshold if study.threshold is not None else postprocess.LESION_THRESHOLD
        started = time.monotonic()
        try:
            current = self.segment(study.series, threshold)
        except NotAssessedError as exc:
            logger.info("ms_lesion not assessed: %s", exc)
            return AlgorithmResult(Verdict.NOT_ASSESSED, reason=str(exc))
        comparison, prior_note = self._compare_with_priors(study, current, threshold)
        if comparison is not None:
            tracked = comparison.tracked
        else:
            tracked = change.without_prior(current.lesions)
        reported = tracked[:MAX_FINDINGS]
        shape = study.series.geometry.shape
        findings = tuple(_finding(t, shape) for t in reported)
        measurements = _study_measurements(current, comparison)
        summary = _summary(current, comparison, prior_note, threshold, len(tracked) - len(reported))
        logger.info(
            "ms_lesion: %d lesion(s)%s in %.1f s",
            len(current.lesions),
            "" if comparison is None else " compared with a prior",
            time.monotonic() - started,
        )
        if not findings:
            return AlgorithmResult(Verdict.ABSENT, reason=summary, measurements=measurements)
        return AlgorithmResult(
            Verdict.PRESENT, findings=findings, reason=summary, measurements=measurements
        )

    def _compare_with_priors(
        self, study: StudyInput, current: postprocess.Segmentation, threshold: float
    ) -> tuple[change.Comparison | None, str]:
        """Compare with the first usable prior (most recent first); a note on what happened."""
        notes: list[str] = []
        for prior in study.priors:
            label = _prior_label(prior)
            try:
                prior_seg = self.segment(prior.series, threshold)
            except NotAssessedError as exc:
                notes.append(f"prior {label} not used: {exc}")
                continue
            registration = register_rigid(
                study.series.array,
                study.series.geometry.affine,
                prior.series.array,
                prior.series.geometry.affine,
            )
            if not registration.aligned:
                notes.append(
                    f"prior {label} not used: it could not be aligned with this exam "
                    f"(correlation {registration.correlation:.2f})"
                )
                continue
            comparison = change.compare(current, prior_seg, registration, prior.findings)
            notes.append(f"compared with prior {label}")
            return comparison, "; ".join(notes)
        return None, "; ".join(notes)


def _prior_label(prior: PriorStudy) -> str:
    date = prior.study_date
    return f"of {date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 else "(date unknown)"


def _check_image(segmentation: postprocess.Segmentation) -> str:
    """Why the image does not look like a brain FLAIR (dark ventricles), or ""."""
    ventricles = segmentation.anatomy["ventricle"]
    voxel_ml = float(np.prod(segmentation.grid.spacing_mm)) / 1000.0
    volume_ml = float(ventricles.sum()) * voxel_ml
    if volume_ml < MIN_VENTRICLE_ML:
        return (
            f"No brain ventricles recognised ({volume_ml:.1f} mL): the volume does not look "
            "like a FLAIR of the brain"
        )
    level = float(np.median(segmentation.image[ventricles]))
    if level > MAX_VENTRICLE_LEVEL:
        return (
            f"Cerebrospinal fluid is not suppressed (ventricles at {level:.2f} of brain signal): "
            "not a FLAIR"
        )
    return ""


def _finding(tracked: change.TrackedLesion, shape: tuple[int, int, int]) -> Finding:
    lesion = tracked.lesion
    qualifiers: tuple[Qualifier, ...] = ()
    if tracked.change is not None:
        qualifiers = (Qualifier(codes.CHANGED_STATUS, CHANGE_CODES[tracked.change]),)
    return Finding(
        finding_type=codes.DEMYELINATION,
        probability=lesion.probability,
        centre_voxel=lesion.centre_voxel,
        region=ImageRegion(slice_index=lesion.slice_index, points=lesion.outline),
        measurements=(
            Measurement(codes.LONG_AXIS, round(lesion.long_axis_mm, 1), codes.MILLIMETRE),
            Measurement(codes.VOLUME, round(lesion.volume_mm3, 1), codes.CUBIC_MILLIMETRE),
        ),
        finding_site=SITE_CODES[lesion.site],
        tracking_id=tracked.tracking_id,
        mask=lesion.mask(shape),
        qualifiers=qualifiers,
    )


def _study_measurements(
    current: postprocess.Segmentation, comparison: change.Comparison | None
) -> tuple[Measurement, ...]:
    total = sum(les.volume_mm3 for les in current.lesions)
    out = [
        Measurement(codes.NUMBER_OF_LESIONS, float(len(current.lesions)), codes.NO_UNITS),
        Measurement(codes.VOLUME, round(total, 1), codes.CUBIC_MILLIMETRE),
    ]
    if comparison is not None:
        out.append(
            Measurement(
                codes.NUMBER_OF_NEW_LESIONS,
                float(comparison.count(change.Change.NEW)),
                codes.NO_UNITS,
            )
        )
        out.append(
            Measurement(
                codes.NUMBER_OF_ENLARGING_LESIONS,
                float(comparison.count(change.Change.ENLARGING)),
                codes.NO_UNITS,
            )
        )
    return tuple(out)


def _summary(
    current: postprocess.Segmentation,
    comparison: change.Comparison | None,
    prior_note: str,
    threshold: float,
    not_listed: int,
) -> str:
    lesions = current.lesions
    if not lesions:
        text = (
            "No FLAIR-hyperintense white matter lesion detected "
            f"(lesion probability threshold {threshold:g})"
        )
    else:
        sites = Counter(les.site for les in lesions)
        parts = [f"{sites[s]} {s.value}" for s in postprocess.Site if sites[s]]
        total_ml = sum(les.volume_mm3 for les in lesions) / 1000.0
        text = (
            f"{len(lesions)} FLAIR-hyperintense lesion(s) ({', '.join(parts)}), "
            f"total volume {total_ml:.2f} mL"
        )
        if not_listed:
            text += f"; the {not_listed} smallest are counted but not listed"
    if comparison is not None:
        text += (
            f"; {comparison.count(change.Change.NEW)} new, "
            f"{comparison.count(change.Change.ENLARGING)} enlarging, "
            f"{comparison.count(change.Change.STABLE)} stable, "
            f"{comparison.count(change.Change.DECREASED)} decreased, "
            f"{comparison.resolved} prior lesion(s) no longer seen"
        )
    if prior_note:
        text += f" ({prior_note})"
    return text
