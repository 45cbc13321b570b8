"""The pulmonary embolism plugin: input checks, model run, contrast check and findings."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from algorithms import codes, packaged_model
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Code,
    Finding,
    ImageRegion,
    Measurement,
    Qualifier,
    StudyInput,
    Verdict,
)
from algorithms.pe import (
    artery_levels,
    filling_defects,
    inference,
    postprocess,
    preprocess,
    second_stage,
)

logger = logging.getLogger(__name__)

PACKAGE = "algorithms.pe"
MODEL_FILE = "model.onnx"
MODEL_CARD = "model.json"
DEFECT_FLOOR = 0.02
"""Second-stage candidates below this probability are dropped at analysis (no site threshold
is that low)."""
DEFAULT_THRESHOLD = 0.5
"""Used only when model.json has no operating point chosen on the validation split."""
MIN_SLICES = 40
MIN_Z_EXTENT_MM = 100.0
MAX_SLICE_MM = 3.0
"""Thicker slices (spacing or SliceThickness) blur segmental arteries: not assessed."""
MAX_PIXEL_SPACING_MM = 1.5
MIN_MATRIX = 128
MAX_AXIS_TILT_DEG = 20.0

CENTRAL_SITE_CODES: dict[str | None, Code] = {
    None: codes.PULMONARY_TRUNK,
    "both": codes.PULMONARY_TRUNK,
    "right": codes.RIGHT_PULMONARY_ARTERY,
    "left": codes.LEFT_PULMONARY_ARTERY,
}
LATERALITY_CODES = {"right": codes.RIGHT, "left": codes.LEFT, "both": codes.BILATERAL}
LEVEL_CODES = {"central": codes.CENTRAL, "lobar": codes.LOBAR, "segmental": codes.SEGMENTAL}


@dataclass(frozen=True)
class Analysis:
    """What the model found in one study, before a threshold is applied."""

    prob: postprocess.FloatVolume
    """(3, D, H, W) embolus, artery and trunk probabilities on the model grid."""
    zone: postprocess.BoolVolume
    trunk: postprocess.Trunk
    grid: preprocess.ModelGrid
    affine: npt.NDArray[np.float64]
    input_shape: tuple[int, int, int]
    seconds: float
    """Pre-processing and model run time."""
    radius_mm: postprocess.FloatVolume | None = None
    """Lumen radius of the predicted arteries and embolus candidates (model grid)."""
    defects: tuple[filling_defects.Defect, ...] = ()
    """Second-stage filling defects (input grid) of probability at least ``DEFECT_FLOOR``."""
    model_hu: postprocess.FloatVolume | None = None
    """The study's HU on the model grid: the level network's vascular window."""
    level_cache: dict[str, postprocess.FloatVolume] = field(
        default_factory=dict, repr=False, compare=False
    )
    """The level network's output once a decision has needed it (``segmental_map``)."""


class PulmonaryEmbolismDetector:
    """Flags suspected pulmonary emboli (central, lobar, segmental) on contrast chest CT.

    Trained on synthetic data only; a research demonstration, not for clinical use.
    """

    info: ClassVar[AlgorithmInfo] = AlgorithmInfo(
        name="pe",
        display_name="radrouter Pulmonary Embolism Flagging",
        version="0.5.0",
        manufacturer="radrouter project",
        device_uid="2.25.77876054093140055290924455650670579109",
        modalities=frozenset({"CT"}),
        intended_use=(
            "Research and demonstration only: flags suspected pulmonary emboli in the central, "
            "lobar and segmental pulmonary arteries on contrast-enhanced axial chest CT (CT "
            "pulmonary angiography or venous-phase CT) so that a worklist can move the study "
            "up. The model was trained on synthetic CT data only and has not been validated on "
            "patient images. Not for clinical use."
        ),
        max_runtime_s=180.0,
        target=codes.PULMONARY_EMBOLISM,
        clinical_use=False,
    )

    def __init__(self, second_stage_file: str | None = None) -> None:
        """``second_stage_file``: run this second-stage scorer (``second_stage.FILES``)
        instead of the one model.json records (a comparison; its threshold was not chosen
        with it)."""
        self._session: Any = None
        self._input_name = "ct"
        self.providers: list[str] = []
        self.default_threshold = DEFAULT_THRESHOLD
        self.calibration: postprocess.Calibration | None = None
        self.second_stage_file = second_stage_file
        self.second_stage: second_stage.LoadedScorer | None = None
        """The filling-defect scorer; None: only the network's own embolus output is used."""
        self.second_stage_shift = 0.0
        """Added to the logit of the scorer's probabilities to put them on the network's
        calibrated scale (``second_stage_shift_from_card``); 0 before an operating point is
        chosen per stage."""
        self.levels: artery_levels.ArteryLevels | None = None
        """The artery-level network; None: levels from the lumen radius alone."""

    def load(self, device: str) -> None:
        """Create the onnxruntime session (CUDA first when asked for and available), warm up."""
        card = packaged_model.read_card(PACKAGE, MODEL_CARD)
        model = packaged_model.read_checked(PACKAGE, MODEL_FILE, card.get("sha256"))
        digest = str(card["sha256"])
        operating = card.get("operating_point", {})
        self.default_threshold = float(operating.get("threshold", DEFAULT_THRESHOLD))
        self.calibration = calibration_from_card(card)
        self.second_stage = second_stage.load(PACKAGE, card, device, self.second_stage_file)
        recorded = self.second_stage is not None and self.second_stage.recorded
        self.second_stage_shift = second_stage_shift_from_card(card) if recorded else 0.0
        self.levels = artery_levels.ArteryLevels.load(PACKAGE, device)
        session = packaged_model.onnx_session(model, device)
        self._input_name = session.get_inputs()[0].name
        session.run(None, {self._input_name: np.zeros((1, 2, 16, 16, 16), dtype=np.float32)})
        self._session = session
        self.providers = list(session.get_providers())
        logger.info(
            "pe model loaded (%s), providers %s, threshold %.3f, %s, second stage %s "
            "(threshold %.3f), level network %s",
            digest[:12],
            self.providers,
            self.default_threshold,
            "calibrated" if self.calibration else "uncalibrated (peak probabilities)",
            self.second_stage.file if self.second_stage else "none",
            shift_probability(self.default_threshold, -self.second_stage_shift),
            self.levels.sha256[:12] if self.levels else "none",
        )

    def threshold_for(self, study: StudyInput) -> float:
        """The site's operating point (``StudyInput.threshold``) or the validated default."""
        return self.default_threshold if study.threshold is None else float(study.threshold)

    def run(self, study: StudyInput) -> AlgorithmResult:
        """Assess ``study.series``; NOT_ASSESSED with a reason for unsuitable input."""
        analysis = self.analyse(study)
        if isinstance(analysis, AlgorithmResult):
            return analysis
        return self.decide(analysis, self.threshold_for(study))

    def analyse(self, study: StudyInput) -> Analysis | AlgorithmResult:
        """Input checks, model run, trunk and contrast check: the analysis, or a NOT_ASSESSED
        result with the reason."""
        if self._session is None:
            raise RuntimeError("PulmonaryEmbolismDetector.run() called before load()")
        series = study.series
        problem = check_input(series.header, series.array, series.geometry.affine)
        if problem:
            logger.info("pe not assessed: %s", problem)
            return AlgorithmResult(Verdict.NOT_ASSESSED, reason=problem)
        started = time.monotonic()
        spacing = series.geometry.spacing_mm
        box = preprocess.find_lung_box(series.array, spacing)
        if box is None:
            return AlgorithmResult(
                Verdict.NOT_ASSESSED, reason="No aerated lung found: not a chest CT"
            )
        model_hu, grid = preprocess.resample(
            series.array, spacing, box, preprocess.MODEL_SPACING_MM
        )
        prob = inference.predict(self._session, self._input_name, preprocess.normalise(model_hu))
        affine = series.geometry.affine
        trunk = postprocess.locate_trunk(prob, model_hu, grid, affine)
        if trunk is None:
            return AlgorithmResult(
                Verdict.NOT_ASSESSED,
                reason="The pulmonary trunk could not be located (no contrast in the pulmonary "
                "arteries, or the central chest is not covered)",
            )
        if trunk.median_hu < postprocess.MIN_TRUNK_HU:
            return AlgorithmResult(
                Verdict.NOT_ASSESSED,
                reason=f"No contrast in the pulmonary arteries: pulmonary trunk median "
                f"{trunk.median_hu:.0f} HU, at least {postprocess.MIN_TRUNK_HU:.0f} HU needed",
            )
        shape = (int(series.array.shape[0]), int(series.array.shape[1]), int(series.array.shape[2]))
        zone = postprocess.artery_zone(prob)
        radius = postprocess.lumen_radius_mm(prob, (prob[postprocess.CLOT] >= 0.5) & zone)
        defects: tuple[filling_defects.Defect, ...] = ()
        if self.second_stage is not None:
            candidates = filling_defects.find_candidates(
                series.array,
                spacing,
                prob,
                grid,
                trunk.median_hu,
                trunk.bifurcation_lps,
                affine,
                radius,
            )
            if candidates is not None:
                p = self.second_stage.scorer.candidate_probabilities(
                    series.array, spacing, candidates, trunk.median_hu
                )
                defects = filling_defects.score(candidates, p, DEFECT_FLOOR)
        return Analysis(
            prob=prob,
            zone=zone,
            trunk=trunk,
            grid=grid,
            affine=affine,
            input_shape=shape,
            seconds=time.monotonic() - started,
            radius_mm=radius,
            defects=defects,
            model_hu=np.asarray(model_hu, dtype=np.float32),
        )

    def scaled_defects(self, analysis: Analysis) -> tuple[filling_defects.Defect, ...]:
        """The analysis's filling defects with their probabilities on the network's scale
        (``second_stage_shift``), which the threshold applies to."""
        shift = self.second_stage_shift
        if shift == 0.0:
            return analysis.defects
        return tuple(
            dataclasses.replace(d, probability=shift_probability(d.probability, shift))
            for d in analysis.defects
        )

    def segmental_map(self, analysis: Analysis) -> postprocess.SegmentalMap | None:
        """The level network's segmental probability for ``analysis``, run when first asked
        for and kept in the analysis; None without a level network (lobar and segmental are
        then named by the lumen radius)."""
        levels, model_hu = self.levels, analysis.model_hu
        if levels is None or model_hu is None:
            return None

        def segmental() -> postprocess.FloatVolume:
            if "segmental" not in analysis.level_cache:
                probability = levels.segmental_probability(analysis.prob, model_hu)
                analysis.level_cache["segmental"] = probability
            return analysis.level_cache["segmental"]

        return segmental

    def study_probability(self, analysis: Analysis) -> float:
        """The study's probability of PE: its most probable first-stage candidate or
        second-stage filling defect (on the network's scale)."""
        p_network = postprocess.study_probability(analysis.prob, analysis.zone, self.calibration)
        return max([p_network, *(d.probability for d in self.scaled_defects(analysis))])

    def decide(self, analysis: Analysis, threshold: float) -> AlgorithmResult:
        """The verdict at ``threshold``: the study probability and the emboli reaching it."""
        p_study = self.study_probability(analysis)
        segmental = self.segmental_map(analysis)
        emboli = postprocess.find_emboli(
            analysis.prob,
            analysis.zone,
            analysis.trunk,
            analysis.grid,
            analysis.input_shape,
            analysis.affine,
            threshold,
            self.calibration,
            lumen_radius=analysis.radius_mm,
            segmental=segmental,
        )
        fresh = second_stage_emboli(
            analysis, self.scaled_defects(analysis), threshold, emboli, segmental
        )
        emboli = sorted(emboli + fresh, key=lambda e: -e.probability)[: postprocess.MAX_FINDINGS]
        trunk_hu = analysis.trunk.median_hu
        logger.info(
            "pe: p=%.3f, %d suspected embol(i) at threshold %.3f, model %.1f s (trunk %.0f HU)",
            p_study,
            len(emboli),
            threshold,
            analysis.seconds,
            trunk_hu,
        )
        if not emboli:
            return AlgorithmResult(
                Verdict.ABSENT,
                probability=p_study,
                reason=(
                    "No pulmonary embolism detected in the central, lobar or segmental "
                    f"pulmonary arteries (p={p_study:.2f}, threshold {threshold:.2f}; "
                    f"pulmonary trunk {trunk_hu:.0f} HU)"
                ),
            )
        findings = tuple(_finding(e, n) for n, e in enumerate(emboli, start=1))
        more = f" (+{len(emboli) - 1} more)" if len(emboli) > 1 else ""
        return AlgorithmResult(
            Verdict.PRESENT,
            findings=findings,
            probability=max(p_study, emboli[0].probability),
            reason=f"suspected PE, {location_text(emboli[0])}, p={emboli[0].probability:.2f}{more}",
        )


def second_stage_emboli(
    analysis: Analysis,
    defects: tuple[filling_defects.Defect, ...],
    threshold: float,
    found: list[postprocess.Embolus],
    segmental: postprocess.SegmentalMap | None = None,
) -> list[postprocess.Embolus]:
    """``defects`` (the analysis's, on the threshold's scale) reaching ``threshold`` that are
    not part of an embolus the network already found, nearby ones merged, located like the
    network's (lobar or segmental by ``segmental``, the level network's output, when
    given)."""
    fresh = [
        d
        for d in defects
        if d.probability >= threshold and not any(_touches(e.mask, d) for e in found)
    ]
    if not fresh:
        return []
    radius = analysis.radius_mm
    if radius is None:
        radius = postprocess.lumen_radius_mm(analysis.prob)
    return [
        postprocess.embolus_on_input_grid(
            d.box,
            d.mask,
            d.probability,
            radius,
            analysis.trunk,
            analysis.grid,
            analysis.input_shape,
            analysis.affine,
            segmental,
        )
        for d in filling_defects.merge_nearby(fresh)[: postprocess.MAX_FINDINGS]
    ]


def _touches(mask: npt.NDArray[np.bool_], defect: filling_defects.Defect) -> bool:
    """Whether ``defect`` overlaps ``mask`` (input grid) or lies within the merge gap of it."""
    gap = filling_defects.MERGE_GAP_VOXELS
    grown = tuple(
        slice(max(0, b.start - gap), min(n, b.stop + gap))
        for b, n in zip(defect.box, mask.shape, strict=True)
    )
    local = np.zeros([g.stop - g.start for g in grown], dtype=bool)
    inner = tuple(
        slice(b.start - g.start, b.stop - g.start) for b, g in zip(defect.box, grown, strict=True)
    )
    local[inner] = defect.mask
    near = ndimage.binary_dilation(local, structure=np.ones((3, 3, 3), bool), iterations=gap)
    return bool((near & mask[grown]).any())


def calibration_from_card(card: dict[str, Any]) -> postprocess.Calibration | None:
    """The candidate calibration stored in model.json by the evaluation, if any."""
    fitted = card.get("calibration")
    if not isinstance(fitted, dict):
        return None
    return postprocess.Calibration(float(fitted["intercept"]), float(fitted["slope"]))


def second_stage_shift_from_card(card: dict[str, Any]) -> float:
    """The logit shift that puts the second stage's probabilities on the network's calibrated
    scale: ``logit(threshold) - logit(second_stage_threshold)`` of model.json's operating
    point, so that one threshold applies both stages' operating points chosen on the
    validation split (0 when the operating point has no second-stage threshold)."""
    operating = card.get("operating_point", {})
    if not isinstance(operating, dict) or "second_stage_threshold" not in operating:
        return 0.0
    return _logit(float(operating["threshold"])) - _logit(
        float(operating["second_stage_threshold"])
    )


def shift_probability(p: float, shift: float) -> float:
    """``sigmoid(logit(p) + shift)``; 0 and 1 stay as they are."""
    if shift == 0.0 or p <= 0.0 or p >= 1.0:
        return p
    return 1.0 / (1.0 + math.exp(-(_logit(p) + shift)))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def location_text(embolus: postprocess.Embolus) -> str:
    """Side and level in words, e.g. "right lobar artery", "saddle (both main arteries)"."""
    if embolus.level == "central":
        if embolus.side == "both":
            return "saddle (pulmonary trunk bifurcation, both main arteries)"
        if embolus.side is None:
            return "pulmonary trunk"
        return f"{embolus.side} main pulmonary artery"
    side = embolus.side or "right"
    return f"{side} {embolus.level} artery"


def _finding(embolus: postprocess.Embolus, number: int) -> Finding:
    qualifiers = [Qualifier(codes.TOPOGRAPHICAL_MODIFIER, LEVEL_CODES[embolus.level])]
    if embolus.side is not None:
        qualifiers.insert(0, Qualifier(codes.LATERALITY, LATERALITY_CODES[embolus.side]))
    return Finding(
        finding_type=codes.PULMONARY_EMBOLISM,
        probability=embolus.probability,
        centre_voxel=embolus.centre_voxel,
        region=ImageRegion(slice_index=embolus.slice_index, points=embolus.outline),
        measurements=(
            Measurement(codes.VOLUME, round(embolus.volume_mm3, 1), codes.CUBIC_MILLIMETRE),
        ),
        finding_site=(
            CENTRAL_SITE_CODES[embolus.side]
            if embolus.level == "central"
            else codes.PULMONARY_ARTERY
        ),
        tracking_id=f"Embolus {number}",
        mask=embolus.mask,
        qualifiers=tuple(qualifiers),
    )


def _slice_thickness(header: Any) -> float | None:
    try:
        return float(str(header.get("SliceThickness", "")).split("\\")[0])
    except ValueError:
        return None


def check_input(
    header: Any, array: npt.NDArray[np.float32], affine: npt.NDArray[np.float64]
) -> str:
    """Why this series cannot be assessed for PE, or "" if it can."""
    modality = str(header.get("Modality", "")).strip().upper()
    if modality != "CT":
        return f"Modality is {modality or 'missing'!r}; this algorithm needs CT"
    if "LOCALIZER" in str(header.get("ImageType", "")).upper():
        return "The series is a localizer (scout), not an axial chest CT"
    n_slices, rows, cols = array.shape
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(np.isfinite(affine)) or np.any(spacing <= 0):
        return "The volume geometry is invalid (degenerate affine)"
    axes = affine[:3, :3] / spacing
    tilt = np.radians(MAX_AXIS_TILT_DEG)
    if abs(axes[2, 0]) < np.cos(tilt) or max(abs(axes[2, 1]), abs(axes[2, 2])) > np.sin(tilt):
        return "The series is not axial (slice axis is not along the patient's head-feet axis)"
    thickness = max(float(spacing[0]), _slice_thickness(header) or 0.0)
    if thickness > MAX_SLICE_MM + 1e-3:
        return (
            f"Slices are {thickness:.1f} mm thick; at most {MAX_SLICE_MM:.0f} mm are needed to "
            "assess segmental pulmonary arteries"
        )
    if n_slices < MIN_SLICES:
        return f"Only {n_slices} slices; at least {MIN_SLICES} are needed"
    z_extent = (n_slices - 1) * spacing[0]
    if z_extent < MIN_Z_EXTENT_MM:
        return f"Scan length {z_extent:.0f} mm is shorter than {MIN_Z_EXTENT_MM:.0f} mm"
    if max(spacing[1], spacing[2]) > MAX_PIXEL_SPACING_MM:
        return f"Pixel spacing {max(spacing[1:]):.2f} mm exceeds {MAX_PIXEL_SPACING_MM} mm"
    if min(rows, cols) < MIN_MATRIX:
        return f"Image matrix {rows}x{cols} is smaller than {MIN_MATRIX}x{MIN_MATRIX}"
    if not np.isfinite(array).all():
        return "The volume contains non-finite values"
    sample = array[:: max(1, n_slices // 16), ::8, ::8]
    if float(np.percentile(sample, 1)) > -500.0 or float(sample.max()) < 0.0:
        return "Pixel values do not look like Hounsfield units of a chest CT"
    return ""
