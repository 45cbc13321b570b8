"""Running an algorithm over a folder of the hospital's cases, as the router would run it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from algorithms.contract import Algorithm, AlgorithmInfo, AlgorithmResult, StudyInput, Verdict
from algorithms.registry import Registry
from config.schema import RouterConfig
from router.run.series_loader import VolumeError, load_series
from router.validate.cases import Truth, choose_series, find_studies
from router.validate.localisation import DEFAULT_HIT_MM, FindingPlace, place_findings

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseOutcome:
    study_uid: str
    scanner: str
    truth: Truth
    verdict: Verdict | None
    """None: the algorithm could not run on the case (``reason`` says why)."""
    score: float | None
    """``case_score`` of the result (its study-level probability, else its most probable
    finding's, else 0 for a negative); None when not assessed or not run."""
    reason: str = ""
    findings: tuple[FindingPlace, ...] = ()
    """The result's findings in patient coordinates, against the truth's locations."""

    @property
    def assessed(self) -> bool:
        return self.verdict in (Verdict.PRESENT, Verdict.ABSENT) and self.score is not None


@dataclass(frozen=True)
class ValidationRun:
    info: AlgorithmInfo
    source: str
    """Where the cases came from (a folder, or shadow-mode results with feedback)."""
    cases: tuple[CaseOutcome, ...]
    truth_without_study: tuple[str, ...]
    """Study UIDs of the truth file not found in the folder."""
    studies_without_truth: int
    """Studies in the folder the truth file does not label (not used); for shadow-mode
    results, those without feedback."""
    threshold: float | None
    """The site's operating point from the config, or None (the algorithm's default)."""
    hit_mm: float = DEFAULT_HIT_MM
    """A finding whose centre is this close to a truth location is at it."""


def validate(
    algorithm: str,
    registry: Registry,
    cases_folder: Path,
    truth: Mapping[str, Truth],
    *,
    config: RouterConfig | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], object] | None = None,
    hit_mm: float = DEFAULT_HIT_MM,
) -> ValidationRun:
    """Run ``algorithm`` on the series of each labelled study under ``cases_folder`` (the one
    its rules in ``config`` give it, else one of its modalities). ``hit_mm``: how close a
    finding's centre must be to a truth location to be at it (``router.validate.localisation``).
    """
    if not hit_mm > 0:
        raise ValueError(f"hit_mm must be positive, got {hit_mm}")
    info = registry.info(algorithm)
    plugin = registry.create(algorithm)
    plugin.load(device)
    settings = config.algorithms.get(algorithm) if config is not None else None
    parameters = {**info.parameters, **(settings.parameters if settings is not None else {})}
    studies = find_studies(cases_folder)
    labelled = [uid for uid in sorted(studies) if uid in truth]
    outcomes = []
    for done, study_uid in enumerate(labelled, start=1):
        chosen = choose_series(
            studies[study_uid],
            algorithm,
            info.modalities,
            config,
            registry.purposes(),
        )
        if chosen is None:
            outcomes.append(
                CaseOutcome(study_uid, "", truth[study_uid], None, None, "no series for it")
            )
        else:
            scanner_header = {"ManufacturerModelName": chosen.scanner}
            threshold = settings.threshold_for(scanner_header) if settings is not None else None
            outcomes.append(
                _run_case(
                    plugin,
                    study_uid,
                    chosen.scanner,
                    truth[study_uid],
                    chosen.paths,
                    threshold,
                    parameters,
                )
            )
        if progress is not None:
            progress(done, len(labelled))
    return ValidationRun(
        info=info,
        source=str(cases_folder),
        cases=tuple(outcomes),
        truth_without_study=tuple(sorted(set(truth) - set(studies))),
        studies_without_truth=len(set(studies) - set(truth)),
        threshold=settings.threshold if settings is not None else None,
        hit_mm=hit_mm,
    )


def _run_case(
    plugin: Algorithm,
    study_uid: str,
    scanner: str,
    truth: Truth,
    paths: tuple[Path, ...],
    threshold: float | None,
    parameters: Mapping[str, float],
) -> CaseOutcome:
    try:
        loaded = load_series(list(paths))
    except VolumeError as exc:
        return CaseOutcome(study_uid, scanner, truth, None, None, f"input not usable: {exc}")
    try:
        result = plugin.run(
            StudyInput(study_uid, loaded.series, threshold=threshold, parameters=parameters)
        )
    except Exception as exc:  # a crashing model is a case that failed, not the end of the run
        LOGGER.warning("validation: the algorithm failed on a case: %s", type(exc).__name__)
        return CaseOutcome(study_uid, scanner, truth, None, None, f"failed: {type(exc).__name__}")
    if result.verdict is Verdict.NOT_ASSESSED:
        return CaseOutcome(study_uid, scanner, truth, result.verdict, None, result.reason)
    return CaseOutcome(
        study_uid,
        scanner,
        truth,
        result.verdict,
        _score(result),
        findings=place_findings(result.findings, loaded.series.geometry, truth.locations),
    )


def _score(result: AlgorithmResult) -> float:
    return case_score(result.verdict, result.probability, [f.probability for f in result.findings])


def case_score(
    verdict: Verdict, probability: float | None, finding_probabilities: Sequence[float]
) -> float:
    """A case's score for the ROC: the study-level probability, else the most probable
    finding's, else 1 for a positive verdict and 0 for a negative one."""
    if probability is not None:
        return float(probability)
    if finding_probabilities:
        return max(float(p) for p in finding_probabilities)
    return 1.0 if verdict is Verdict.PRESENT else 0.0
