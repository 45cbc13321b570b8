"""The CT water-phantom constancy test on generated phantoms with a known error."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from algorithms.contract import Purpose, SeriesInput, StudyInput, Verdict, VolumeGeometry
from algorithms.ct_water_qa.measure import (
    NotAWaterPhantomError,
    WaterPhantomMeasurement,
    measure_water_phantom,
)
from algorithms.ct_water_qa.plugin import PARAMETERS, CtWaterPhantomQa
from testing.phantoms import WaterPhantom, water_phantom_hu


def measure(phantom: WaterPhantom) -> WaterPhantomMeasurement:
    return measure_water_phantom(water_phantom_hu(phantom), (phantom.pixel_mm, phantom.pixel_mm))


def study_of(phantom: WaterPhantom, **parameters: float) -> StudyInput:
    volume = water_phantom_hu(phantom)
    affine = np.diag([phantom.slice_mm, phantom.pixel_mm, phantom.pixel_mm, 1.0])
    series = SeriesInput(
        series_instance_uid="1.2.3",
        array=volume,
        geometry=VolumeGeometry(affine, volume.shape, "1.2.3.4"),
        header={"Modality": "CT"},
    )
    return StudyInput("1.2", series, parameters={**PARAMETERS, **parameters})


@pytest.fixture(scope="module")
def plugin() -> CtWaterPhantomQa:
    algorithm = CtWaterPhantomQa()
    algorithm.load("cpu")
    return algorithm


def test_it_is_a_quality_control_algorithm_with_the_common_tolerances() -> None:
    info = CtWaterPhantomQa.info
    assert info.purpose is Purpose.QUALITY_CONTROL
    assert dict(info.parameters) == {
        "water_tolerance_hu": 4.0,
        "uniformity_tolerance_hu": 4.0,
        "noise_max_hu": 0.0,
    }


@pytest.mark.parametrize("bias", [-7.0, 0.0, 3.0])
@pytest.mark.parametrize("noise", [3.0, 12.0])
def test_water_ct_number_and_noise_are_measured_within_a_fraction_of_a_hu(
    bias: float, noise: float
) -> None:
    phantom = WaterPhantom(bias_hu=bias, noise_hu=noise, seed=int(100 + 10 * bias + noise))
    measured = measure(phantom)

    # about 2,600 pixels in the central ROIs of three slices: a standard error of noise / 51
    assert measured.water_hu == pytest.approx(bias, abs=4 * noise / 51)
    assert measured.noise_hu == pytest.approx(noise, rel=0.05)
    assert measured.phantom_diameter_mm == pytest.approx(phantom.diameter_mm, rel=0.02)


@pytest.mark.parametrize("cupping", [-6.0, 0.0, 3.0, 8.0])
def test_uniformity_is_the_cupping_at_the_peripheral_rois(cupping: float) -> None:
    phantom = WaterPhantom(cupping_hu=cupping, noise_hu=4.0, seed=7)
    measured = measure(phantom)
    roi = measured.peripheral_rois[0]

    assert measured.uniformity_hu == pytest.approx(true_uniformity(phantom, measured), abs=0.6)
    # ROI 20 mm across, its edge 10 mm inside the water
    assert 2 * roi.radius_px * phantom.pixel_mm == pytest.approx(20.0, abs=0.1)
    edge_mm = (roi_offset_px(measured) + roi.radius_px) * phantom.pixel_mm
    assert phantom.water_radius_mm - edge_mm == pytest.approx(10.0, abs=2.0)


def roi_offset_px(measured: WaterPhantomMeasurement) -> float:
    """How far the first peripheral ROI's centre lies from the central ROI's, in pixels."""
    roi, centre = measured.peripheral_rois[0], measured.central_roi
    return float(np.hypot(roi.row - centre.row, roi.column - centre.column))


def true_uniformity(phantom: WaterPhantom, measured: WaterPhantomMeasurement) -> float:
    """The generated cupping averaged over the peripheral ROI, less over the central one."""
    radius_mm = measured.peripheral_rois[0].radius_px * phantom.pixel_mm
    offset_mm = roi_offset_px(measured) * phantom.pixel_mm
    return phantom.expected_peripheral_offset_hu(offset_mm, radius_mm)


def test_the_table_under_the_phantom_is_not_taken_for_it() -> None:
    measured = measure(WaterPhantom(diameter_mm=160.0, noise_hu=2.0))
    assert measured.phantom_diameter_mm == pytest.approx(160.0, rel=0.03)
    assert measured.central_roi.row == pytest.approx(255.5, abs=1.0)


def test_every_generated_case_is_judged_as_its_truth(plugin: CtWaterPhantomQa) -> None:
    """36 phantoms: bias, cupping and noise each in and out of tolerance."""
    cases = list(itertools.product([0.0, 2.5, -6.0], [0.0, 2.0, 9.0, -9.0], [4.0, 9.0, 15.0]))
    wrong = []
    for number, (bias, cupping, noise) in enumerate(cases):
        phantom = WaterPhantom(bias_hu=bias, cupping_hu=cupping, noise_hu=noise, seed=number)
        result = plugin.run(study_of(phantom, noise_max_hu=10.0))
        expected_uniformity = true_uniformity(phantom, measure(phantom))
        failed = {
            "Water CT number": abs(bias) > 4.0,
            "Uniformity": abs(expected_uniformity) > 4.0,
            "Noise": noise > 10.0,
        }
        expected = {name for name, fails in failed.items() if fails}
        found = {f.tracking_id for f in result.findings}
        verdict = Verdict.PRESENT if expected else Verdict.ABSENT
        if (result.verdict, found) != (verdict, expected):
            wrong.append((bias, cupping, noise, result.verdict, found, result.reason))
    assert wrong == []


def test_a_failing_phantom_marks_the_failed_roi_and_states_every_value(
    plugin: CtWaterPhantomQa,
) -> None:
    result = plugin.run(study_of(WaterPhantom(bias_hu=6.0, cupping_hu=0.0, noise_hu=4.0)))

    assert result.verdict is Verdict.PRESENT
    (finding,) = result.findings
    assert finding.tracking_id == "Water CT number"
    assert finding.region.slice_index == 2  # the middle of five slices
    assert finding.measurements[0].value == pytest.approx(6.0, abs=0.5)
    assert "water +6.0 HU (0 +/- 4)" in result.reason
    assert "uniformity" in result.reason and "noise" in result.reason
    names = [m.name.meaning for m in result.measurements]
    assert names[0] == "Mean CT number of water"
    assert len(names) == 3


def test_a_passing_phantom_is_stated_within_tolerance(plugin: CtWaterPhantomQa) -> None:
    result = plugin.run(study_of(WaterPhantom(bias_hu=1.0, cupping_hu=2.0, noise_hu=5.0)))

    assert result.verdict is Verdict.ABSENT
    assert result.reason.startswith("Within tolerance: water +1.0 HU")
    assert "noise 5.0 HU (no limit set)" in result.reason


def test_site_tolerances_from_the_yaml_apply(plugin: CtWaterPhantomQa) -> None:
    phantom = WaterPhantom(bias_hu=3.0, noise_hu=4.0)
    assert plugin.run(study_of(phantom)).verdict is Verdict.ABSENT
    strict = plugin.run(study_of(phantom, water_tolerance_hu=2.0))
    assert strict.verdict is Verdict.PRESENT


def test_a_patient_like_image_is_not_assessed_with_the_reason(plugin: CtWaterPhantomQa) -> None:
    small = study_of(WaterPhantom(diameter_mm=60.0))
    result = plugin.run(small)
    assert result.verdict is Verdict.NOT_ASSESSED
    assert "smaller than a water phantom" in result.reason

    air = np.full((3, 64, 64), -1000.0, dtype=np.float32)
    with pytest.raises(NotAWaterPhantomError, match="nothing but air"):
        measure_water_phantom(air, (0.6, 0.6))
