"""The CT water-phantom constancy test: CT number of water, noise and uniformity against the
site's tolerances; a quality-control algorithm (never run on patients' series)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from algorithms import codes
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Code,
    Finding,
    ImageRegion,
    Measurement,
    Purpose,
    StudyInput,
    Verdict,
)
from algorithms.ct_water_qa.measure import (
    NotAWaterPhantomError,
    Roi,
    WaterPhantomMeasurement,
    measure_water_phantom,
)

logger = logging.getLogger(__name__)

PARAMETERS: Mapping[str, float] = {
    "water_tolerance_hu": 4.0,
    "uniformity_tolerance_hu": 4.0,
    "noise_max_hu": 0.0,
}
"""Defaults: water 0 +/- 4 HU and each peripheral ROI within +/- 4 HU of the centre, as common
CT constancy programmes set them; noise judged only when the site sets its limit (> 0),
since it depends on dose, kernel and slice thickness (set it from the scanner's baseline)."""


class CtWaterPhantomQa:
    """Measures a water-phantom scan as a daily CT constancy test and says whether any
    measurement is out of tolerance. Pure image analysis, no model."""

    info: ClassVar[AlgorithmInfo] = AlgorithmInfo(
        name="ct_water_qa",
        display_name="radrouter CT Water Phantom Constancy Test",
        version="0.1.0",
        manufacturer="radrouter project",
        device_uid="2.25.190841723990735327463006209938713386129",
        modalities=frozenset({"CT"}),
        intended_use=(
            "Quality control: CT number of water, noise and uniformity of a water-phantom "
            "scan against the site's constancy tolerances. For QA and phantom series only; "
            "not a substitute for the physicist's acceptance and annual tests."
        ),
        max_runtime_s=30.0,
        target=codes.CT_CONSTANCY_FAILURE,
        clinical_use=False,
        purpose=Purpose.QUALITY_CONTROL,
        parameters=PARAMETERS,
    )

    def load(self, device: str) -> None:
        """Nothing to load: no model."""

    def run(self, study: StudyInput) -> AlgorithmResult:
        series = study.series
        modality = series.header.get("Modality", "").strip().upper()
        if modality != "CT":
            return AlgorithmResult(
                Verdict.NOT_ASSESSED, reason=f"Modality is {modality or 'missing'!r}, not CT"
            )
        limits = {**PARAMETERS, **study.parameters}
        affine = np.asarray(series.geometry.affine, dtype=np.float64)
        spacing = (float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 2])))
        try:
            measured = measure_water_phantom(series.array, spacing)
        except NotAWaterPhantomError as exc:
            return AlgorithmResult(
                Verdict.NOT_ASSESSED, reason=f"Not measurable as a water phantom: {exc}"
            )
        logger.info(
            "water phantom: %.1f HU, noise %.1f HU, uniformity %+.1f HU, %.0f mm",
            measured.water_hu,
            measured.noise_hu,
            measured.uniformity_hu,
            measured.phantom_diameter_mm,
        )
        return judge(measured, limits)


def judge(measured: WaterPhantomMeasurement, limits: Mapping[str, float]) -> AlgorithmResult:
    """PRESENT (out of tolerance) with one finding per failed test on its ROI, else ABSENT;
    the values and their tolerances in words either way."""
    water_limit = limits["water_tolerance_hu"]
    uniformity_limit = limits["uniformity_tolerance_hu"]
    noise_limit = limits["noise_max_hu"]
    slice_index = measured.slice_indices[len(measured.slice_indices) // 2]
    worst = next(r for r in measured.peripheral_rois if r.name == measured.worst_peripheral)
    tests = [
        (
            "Water CT number",
            abs(measured.water_hu) > water_limit,
            codes.WATER_CT_NUMBER_FAILURE,
            measured.central_roi,
            _hu(codes.WATER_CT_NUMBER, measured.water_hu),
            f"water {measured.water_hu:+.1f} HU (0 +/- {water_limit:g})",
        ),
        (
            "Uniformity",
            abs(measured.uniformity_hu) > uniformity_limit,
            codes.UNIFORMITY_FAILURE,
            worst,
            _hu(codes.UNIFORMITY, measured.uniformity_hu),
            f"uniformity {measured.uniformity_hu:+.1f} HU at {worst.name} "
            f"(+/- {uniformity_limit:g})",
        ),
        (
            "Noise",
            noise_limit > 0 and measured.noise_hu > noise_limit,
            codes.NOISE_FAILURE,
            measured.central_roi,
            _hu(codes.NOISE, measured.noise_hu),
            f"noise {measured.noise_hu:.1f} HU"
            + (f" (at most {noise_limit:g})" if noise_limit > 0 else " (no limit set)"),
        ),
    ]
    measurements = tuple(measurement for *_, measurement, _ in tests)
    words = "; ".join(text for *_, text in tests)
    failed = [test for test in tests if test[1]]
    if not failed:
        return AlgorithmResult(
            Verdict.ABSENT, reason=f"Within tolerance: {words}", measurements=measurements
        )
    findings = tuple(
        _finding(name, finding_type, roi, slice_index, measurement)
        for name, _, finding_type, roi, measurement, _ in failed
    )
    names = ", ".join(test[0].lower() for test in failed)
    return AlgorithmResult(
        Verdict.PRESENT,
        findings=findings,
        reason=f"Out of tolerance ({names}): {words}",
        probability=1.0,
        measurements=measurements,
    )


def _finding(
    name: str, finding_type: Code, roi: Roi, slice_index: int, measurement: Measurement
) -> Finding:
    return Finding(
        finding_type=finding_type,
        probability=1.0,
        centre_voxel=(float(slice_index), roi.row, roi.column),
        region=ImageRegion(slice_index=slice_index, points=roi.outline()),
        measurements=(measurement,),
        tracking_id=name,
    )


def _hu(name: Code, value: float) -> Measurement:
    return Measurement(name, round(float(value), 2), codes.HOUNSFIELD_UNIT)
