"""Tests of the fracture generator, pre/post-processing and plugin (the real ONNX model)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pydicom
import pytest

from algorithms import codes
from algorithms.contract import Algorithm, SeriesInput, StudyInput, Verdict, VolumeGeometry
from algorithms.fracture import postprocess, preprocess
from algorithms.fracture.plugin import FractureDetector, check_input
from router.run.series_loader import load_series
from testing.corpus import pydicom_data_files, pydicom_test_file
from training.fracture.evaluate import box_of, make_study
from training.fracture.synth import (
    LIMBS,
    SyntheticRadiograph,
    _Bone,
    _bone_image,
    _fracture_points,
    _Line,
    _Rigid,
    generate_radiograph,
)


@pytest.fixture(scope="module")
def detector() -> FractureDetector:
    det = FractureDetector()
    det.load("cpu")
    return det


def _with_header(study: StudyInput, **header: str) -> StudyInput:
    series = study.series
    new = SeriesInput(
        series.series_instance_uid, series.array, series.geometry, {**series.header, **header}
    )
    return dataclasses.replace(study, series=new)


def _with_threshold(study: StudyInput, threshold: float) -> StudyInput:
    """The study with ``threshold`` set, whether or not StudyInput has the field yet."""
    if "threshold" in {f.name for f in dataclasses.fields(StudyInput)}:
        return dataclasses.replace(study, threshold=threshold)  # type: ignore[call-arg,unused-ignore]

    @dataclasses.dataclass(frozen=True)
    class StudyWithThreshold(StudyInput):
        threshold: float | None = None

    return StudyWithThreshold(study.study_instance_uid, study.series, study.priors, threshold)


def _displaced_cases(count: int, size: int = 448) -> list[SyntheticRadiograph]:
    """The first ``count`` generated fractures displaced by >= 2 mm (chosen by the truth)."""
    found: list[SyntheticRadiograph] = []
    seed = 0
    while len(found) < count:
        radiograph = generate_radiograph(seed, fracture=True, size=size)
        if radiograph.fractures and radiograph.fractures[0].displacement_mm >= 2.0:
            found.append(radiograph)
        seed += 1
    return found


def _localised(
    truth_box: tuple[float, float, float, float], found: list[tuple[float, float, float, float]]
) -> bool:
    return any(postprocess.iou(truth_box, b) >= 0.3 for b in found)


# --- generator -------------------------------------------------------------------------------


def test_generator_is_deterministic_by_seed() -> None:
    a = generate_radiograph(5, size=256)
    b = generate_radiograph(5, size=256)
    c = generate_radiograph(6, size=256)
    assert a.pixels.dtype == np.uint16 and max(a.pixels.shape) == 256
    assert np.array_equal(a.pixels, b.pixels) and a.fractures == b.fractures
    assert not np.array_equal(a.pixels, c.pixels) or a.pixels.shape != c.pixels.shape
    assert int(a.pixels.max()) < 2**a.bits_stored


def test_monochrome1_is_the_inverse_of_monochrome2() -> None:
    one = generate_radiograph(11, size=256, photometric="MONOCHROME1")
    two = generate_radiograph(11, size=256, photometric="MONOCHROME2")
    assert one.bits_stored == two.bits_stored
    top = 2**one.bits_stored - 1
    assert np.array_equal(one.pixels.astype(int), top - two.pixels.astype(int))


@pytest.mark.parametrize("limb", sorted(LIMBS))
def test_fracture_truth_lies_on_the_image_with_its_bone(limb: str) -> None:
    for seed in range(3):
        radiograph = generate_radiograph(seed, fracture=True, limb=limb, size=320)
        rows, cols = radiograph.pixels.shape
        assert radiograph.fractures, f"seed {seed} drew no fracture"
        assert radiograph.body_part == LIMBS[limb].body_part
        for truth in radiograph.fractures:
            r0, c0, r1, c1 = truth.box
            assert 0 <= r0 < r1 <= rows - 1 and 0 <= c0 < c1 <= cols - 1
            assert r0 <= truth.centre[0] <= r1 and c0 <= truth.centre[1] <= c1
            assert truth.bone in radiograph.bones
        negative = generate_radiograph(seed, fracture=False, limb=limb, size=320)
        assert negative.fractures == ()


def test_bone_is_brighter_than_soft_tissue_once_monochrome1_is_inverted() -> None:
    radiograph = generate_radiograph(21, fracture=False, size=400, photometric="MONOCHROME1")
    bright = preprocess.bone_bright(radiograph.pixels, "MONOCHROME1")
    # The limb (soft tissue + bone) is brighter than the direct-exposure air beside it.
    centre = bright[bright.shape[0] // 2]
    assert np.percentile(centre, 95) > np.percentile(centre, 20)


def test_a_fracture_line_is_a_lucent_gap_across_the_bone() -> None:
    bone = _Bone(
        name="tibia",
        origin=(50.0, 50.0),
        direction=(1.0, 0.0),
        radius=10.0,
        cortex=3.0,
        taper=0.0,
        bow=0.0,
        depth_scale=1.0,
        end_s=None,
        flare=0.5,
        flare_len=20.0,
    )
    y, x = np.meshgrid(
        np.arange(0, 100, 0.5, dtype=np.float32),
        np.arange(0, 100, 0.5, dtype=np.float32),
        indexing="ij",
    )
    texture = np.zeros_like(y)
    intact = _bone_image(bone, y, x, texture)
    bone.lines.append(_Line(0.0, 0.0, 0.0, 40.0, 0.0, 2.0, 1.0, (-40.0, 40.0)))
    bone.transforms.append(_Rigid())
    broken = _bone_image(bone, y, x, texture)
    at_line = (slice(100, 101), slice(84, 117))  # y = 50 mm (s = 0), across the bone
    assert intact[at_line].min() > 0.1
    assert broken[at_line].max() < 0.01
    away = (slice(120, 121), slice(84, 117))  # 10 mm along the bone
    np.testing.assert_allclose(broken[away], intact[away], atol=1e-6)
    # Outside the bone there is nothing.
    assert intact[:, :40].max() == 0.0


def _bowed_oblique_bone() -> _Bone:
    return _Bone(
        name="tibia",
        origin=(80.0, 80.0),
        direction=(math.cos(0.5), math.sin(0.5)),
        radius=10.0,
        cortex=3.0,
        taper=0.0,
        bow=4e-4,
        depth_scale=1.0,
        end_s=None,
        flare=0.5,
        flare_len=20.0,
    )


def test_bone_to_image_is_the_inverse_of_local() -> None:
    bone = _bowed_oblique_bone()
    s = np.array([-40.0, 0.0, 5.0, 35.0], dtype=np.float32)
    d = np.array([6.0, -9.0, 0.0, 2.5], dtype=np.float32)
    y, x = bone.to_image(s, d)
    s2, d2 = bone.local(np.asarray(y, np.float32), np.asarray(x, np.float32))
    np.testing.assert_allclose(s2, s, atol=1e-3)
    np.testing.assert_allclose(d2, d, atol=1e-3)


def test_fracture_truth_points_lie_in_the_drawn_gap() -> None:
    """The truth line (training target and box) is where the lucent line is drawn, also for an
    oblique line on a rotated, bowed bone (a mirrored truth would miss it)."""
    bone = _bowed_oblique_bone()
    bone.lines.append(_Line(30.0, 0.6, 0.0, 40.0, 0.0, 2.0, 1.0, (-40.0, 40.0)))
    bone.transforms.append(_Rigid())
    step = 0.25
    y, x = np.meshgrid(
        np.arange(0, 160, step, dtype=np.float32),
        np.arange(0, 160, step, dtype=np.float32),
        indexing="ij",
    )
    texture = np.zeros_like(y)
    broken = _bone_image(bone, y, x, texture)
    ys, xs = _fracture_points(bone)
    rows = np.rint(ys / step).astype(int)
    cols = np.rint(xs / step).astype(int)
    assert len(ys) == 50  # 25 points across the bone, on each of the two fragments
    inner = np.r_[3:22, 28:47]  # points well inside the bone's outline
    assert broken[rows[inner], cols[inner]].max() < 0.05
    # 3 mm along the bone from the line there is bone on both sides.
    ay, ax = bone.direction
    for sign in (1.0, -1.0):
        r2 = np.rint((ys + sign * 3.0 * ay) / step).astype(int)
        c2 = np.rint((xs + sign * 3.0 * ax) / step).astype(int)
        assert broken[r2[inner], c2[inner]].min() > 0.1


# --- pre- and post-processing ---------------------------------------------------------------


def test_letterbox_maps_model_pixels_back_to_input_pixels() -> None:
    image = np.zeros((900, 500), dtype=np.float32)
    image[600:606, 120:126] = 1.0
    canvas, box = preprocess.letterbox(image, 320)
    assert canvas.shape == (320, 320)
    peak = np.unravel_index(int(np.argmax(canvas)), canvas.shape)
    assert box.to_input(float(peak[0]), float(peak[1])) == pytest.approx((602.5, 122.5), abs=2.5)
    assert box.to_model(*box.to_input(10.0, 20.0)) == pytest.approx((10.0, 20.0))
    # The short side is centred; the padding is PAD_VALUE.
    assert canvas[:, :60].max() == preprocess.PAD_VALUE


def test_window_inverts_monochrome1_and_maps_percentiles_to_unit_range() -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(100, 4000, size=(300, 300)).astype(np.uint16)
    stored[100:120, 100:120] = 50  # low stored value = bright in MONOCHROME1
    one, _, spread = preprocess.prepare(stored, "MONOCHROME1", 300)
    two, _, _ = preprocess.prepare(stored, "MONOCHROME2", 300)
    assert spread > 0
    assert one[110, 110] == pytest.approx(1.0) and two[110, 110] == pytest.approx(0.0)
    assert one.min() >= 0.0 and one.max() <= 1.0
    _, _, flat = preprocess.prepare(np.full((300, 300), 7, np.uint16), "MONOCHROME2", 300)
    assert flat == 0.0


def test_decode_turns_heatmap_regions_into_boxes_on_the_radiograph() -> None:
    image = np.zeros((1280, 640), dtype=np.float32)
    _, box = preprocess.letterbox(image, 320)  # 4 input pixels per model pixel
    heat = np.zeros((80, 80), dtype=np.float32)
    heat[40:43, 30:36] = 0.6  # a fracture line region, 3 x 6 cells
    heat[41, 33] = 0.9
    heat[60, 50] = 0.7  # a second, separate region
    heat[10, 5] = 0.95  # on the letterbox padding (columns 0-19 of the heatmap): ignored
    first, second = postprocess.decode(heat, box, threshold=0.5)
    assert first.probability == pytest.approx(0.9) and second.probability == pytest.approx(0.7)
    centres = postprocess.cell_centres(80)
    top, left = box.to_input(centres[40], centres[30])
    bottom, right = box.to_input(centres[42], centres[35])
    assert first.extent == pytest.approx((top, left, bottom, right))
    assert first.row_max - first.row_min == pytest.approx(2 * 4 * box.step)
    # A one-cell region still gets a box of MIN_BOX_PX model pixels.
    assert second.col_max - second.col_min == pytest.approx(postprocess.MIN_BOX_PX * box.step)
    outline = first.outline()
    assert len(outline) == 5 and outline[0] == outline[-1]
    assert postprocess.decode(heat, box, threshold=0.95) == []
    valid = postprocess.valid_cells(box, (80, 80))
    assert not valid[10, 5] and valid[41, 33]
    assert postprocess.study_probability(heat, valid) == pytest.approx(0.9)


def test_decode_keeps_one_fracture_line_with_a_weaker_middle_in_one_box() -> None:
    image = np.zeros((640, 640), dtype=np.float32)
    _, box = preprocess.letterbox(image, 320)
    heat = np.zeros((80, 80), dtype=np.float32)
    heat[40, 20:26] = 0.8  # one line: strong ends, a dip to 0.35 (>= half of 0.5) between
    heat[40, 26:30] = 0.35
    heat[40, 30:36] = 0.9
    heat[10, 10:14] = 0.4  # a weak region that never reaches the threshold: no box
    (only,) = postprocess.decode(heat, box, threshold=0.5)
    centres = postprocess.cell_centres(80)
    assert only.probability == pytest.approx(0.9)
    assert only.col_min == pytest.approx(box.to_input(0.0, centres[20])[1])
    assert only.col_max == pytest.approx(box.to_input(0.0, centres[35])[1])
    # Below half the threshold the gap splits the line into two regions.
    heat[40, 26:30] = 0.2
    assert len(postprocess.decode(heat, box, threshold=0.5)) == 2


def test_training_target_marks_the_fracture_line_cells() -> None:
    from training.fracture.train import targets

    line = np.array([[41.0, 10.0], [41.0, 30.0]], dtype=np.float32)  # row 41 -> cell 10
    heat = targets(line, 160)
    assert heat.shape == (40, 40)
    assert heat[10, 2] == 1.0 and heat[9, 7] == 1.0 and heat[11, 7] == 1.0
    assert heat[12, 2] == 0.0 and heat.sum() == 3 * 3 * 2


# --- model files and plugin -------------------------------------------------------------------


def test_model_card_matches_the_shipped_model() -> None:
    package = resources.files("algorithms.fracture")
    model = package.joinpath("model.onnx").read_bytes()
    card = json.loads(package.joinpath("model.json").read_text())
    assert card["sha256"] == hashlib.sha256(model).hexdigest()
    assert len(model) < 2_000_000
    assert card["input"]["working_size"] == preprocess.WORKING_SIZE
    assert 0.0 < card["operating_point"]["threshold"] < 1.0


def test_synth_and_plugin_do_not_import_torch() -> None:
    code = (
        "import sys, training.fracture.synth, algorithms.fracture.plugin; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_plugin_satisfies_the_algorithm_protocol() -> None:
    assert isinstance(FractureDetector(), Algorithm)
    info = FractureDetector.info
    assert info.name == "fracture" and info.modalities == frozenset({"CR", "DX"})
    assert info.target == codes.FRACTURE and info.target.value == "125605004"
    assert info.clinical_use is False
    assert "not for clinical use" in info.intended_use.lower()
    assert "synthetic" in info.intended_use.lower()


def test_run_before_load_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="load"):
        FractureDetector().run(make_study(generate_radiograph(1, size=320)))


def test_plugin_boxes_displaced_fractures_where_they_are(detector: FractureDetector) -> None:
    for radiograph in _displaced_cases(3):
        result = detector.run(make_study(radiograph))
        assert result.verdict is Verdict.PRESENT, (radiograph.fractures, result.reason)
        assert result.probability is not None and result.probability >= detector.threshold
        assert "suspected fracture" in result.reason.lower()
        boxes = [box_of(f.region.points) for f in result.findings]
        truth = radiograph.fractures[0]
        assert _localised(truth.box, boxes), (truth, boxes)
        for n, finding in enumerate(result.findings, start=1):
            assert finding.finding_type == codes.FRACTURE
            assert finding.region.slice_index == 0 and len(finding.region.points) == 5
            assert finding.centre_voxel[0] == 0.0
            assert finding.tracking_id == f"Fracture {n}"
        site = result.findings[0].finding_site
        expected = {"LEG": codes.LOWER_LEG, "FOREARM": codes.FOREARM}
        assert site == expected.get(radiograph.body_part, site)


def test_plugin_calls_fracture_free_radiographs_low_risk(detector: FractureDetector) -> None:
    for seed in (0, 1, 2, 3):
        radiograph = generate_radiograph(seed, fracture=False, size=448)
        result = detector.run(make_study(radiograph))
        assert result.verdict is Verdict.ABSENT, (seed, result.probability, result.reason)
        assert result.findings == ()
        assert "low risk" in result.reason.lower()
        assert result.probability is not None and result.probability < detector.threshold


def test_the_studys_threshold_overrides_the_operating_point(detector: FractureDetector) -> None:
    positive = _displaced_cases(1)[0]
    default = detector.run(make_study(positive))
    assert default.verdict is Verdict.PRESENT and default.probability is not None
    above = min(0.99999, (default.probability + 1.0) / 2.0)
    strict = detector.run(_with_threshold(make_study(positive), above))
    assert strict.verdict is Verdict.ABSENT and f"operating point {above:.3f}" in strict.reason
    assert strict.probability == default.probability
    negative = generate_radiograph(0, fracture=False, size=448)
    usual = detector.run(make_study(negative))
    assert usual.verdict is Verdict.ABSENT and usual.probability is not None
    lenient = detector.run(_with_threshold(make_study(negative), usual.probability * 0.9))
    assert lenient.verdict is Verdict.PRESENT and lenient.probability == usual.probability


# --- inputs the plugin must refuse --------------------------------------------------------------


def _study_of(array: np.ndarray, **header: str) -> StudyInput:
    geometry = VolumeGeometry(np.eye(4), (array.shape[0], array.shape[1], array.shape[2]), "")
    series = SeriesInput("2.25.1", array.astype(np.float32), geometry, header)
    return StudyInput("2.25.2", series)


@pytest.mark.parametrize(
    ("shape", "header", "reason"),
    [
        ((1, 400, 400), {"Modality": "CT"}, "needs a radiograph (CR or DX)"),
        ((1, 400, 400), {"Modality": "CR", "BodyPartExamined": "CHEST"}, "not a long-bone"),
        ((1, 400, 400), {"Modality": "DX", "BodyPartExamined": "KNEE"}, "not a long-bone"),
        ((3, 400, 400), {"Modality": "CR"}, "3 images"),
        ((1, 120, 400), {"Modality": "CR"}, "smaller than 256x256"),
        (
            (1, 400, 400),
            {"Modality": "CR", "PhotometricInterpretation": "PALETTE COLOR"},
            "MONOCHROME",
        ),
    ],
)
def test_unsuitable_input_is_not_assessed_with_the_reason(
    detector: FractureDetector, shape: tuple[int, int, int], header: dict[str, str], reason: str
) -> None:
    array = np.random.default_rng(0).uniform(0, 1000, size=shape)
    result = detector.run(_study_of(array, **header))
    assert result.verdict is Verdict.NOT_ASSESSED
    assert reason in result.reason


def test_a_blank_image_is_not_assessed(detector: FractureDetector) -> None:
    result = detector.run(_study_of(np.full((1, 400, 400), 512.0), Modality="DX"))
    assert result.verdict is Verdict.NOT_ASSESSED and "no contrast" in result.reason


def test_check_input_accepts_long_bone_views_and_a_missing_body_part() -> None:
    array = np.zeros((1, 300, 300), dtype=np.float32)
    geometry = VolumeGeometry(np.eye(4), (1, 300, 300), "")
    for part in ("LEG", "forearm", "EXTREMITY", "Lower Limb", ""):
        series = SeriesInput(
            "2.25.1", array, geometry, {"Modality": "DX", "BodyPartExamined": part}
        )
        assert check_input(series) == "", part


# --- real radiographs from pydicom and pydicom-data --------------------------------------------


def test_real_chest_radiograph_is_not_assessed_as_not_a_long_bone(
    detector: FractureDetector,
) -> None:
    loaded = load_series([pydicom_test_file("RG1_UNCR.dcm")])
    result = detector.run(StudyInput("2.25.3", loaded.series))
    assert result.verdict is Verdict.NOT_ASSESSED
    assert "CHEST" in result.reason and "not a long-bone radiograph" in result.reason


def test_tiny_real_cr_images_are_not_assessed(detector: FractureDetector) -> None:
    loaded = load_series([pydicom_test_file("6154")])
    result = detector.run(StudyInput("2.25.4", loaded.series))
    assert result.verdict is Verdict.NOT_ASSESSED
    assert "16x16" in result.reason or "CSPINE" in result.reason


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG3_J2KR.dcm"])
def test_real_lower_leg_radiograph_is_assessed(detector: FractureDetector, name: str) -> None:
    loaded = load_series([pydicom_test_file(name)])
    assert loaded.series.header["PhotometricInterpretation"] == "MONOCHROME1"
    result = detector.run(StudyInput("2.25.5", loaded.series))
    assert result.verdict in (Verdict.PRESENT, Verdict.ABSENT)
    assert result.probability is not None
    rows, cols = loaded.series.array.shape[1:]
    for finding in result.findings:
        r0, c0, r1, c1 = box_of(finding.region.points)
        assert 0 <= r0 < r1 <= rows - 1 and 0 <= c0 < c1 <= cols - 1


def _local_radiograph_files() -> list[tuple[str, str]]:
    """(path, BodyPartExamined) of every CR and DX file of the installed pydicom-data wheel."""
    found = []
    for path in pydicom_data_files():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM (the wheel also holds a few other files)
            continue
        if ds.get("Modality") in ("CR", "DX"):
            found.append((str(path), str(ds.get("BodyPartExamined", ""))))
    return found


def test_every_real_cr_image_of_pydicom_data_gets_a_result_or_not_assessed(
    detector: FractureDetector,
) -> None:
    """Every CR/DX radiograph available offline goes through the plugin without an error:
    the extremity images (RG3, lossless and lossy JPEG 2000 and uncompressed) get a verdict
    and a probability, the chest images (RG1) are not assessed because of their body part."""
    files = _local_radiograph_files()
    names = {Path(path).name for path, _ in files}
    expected = {f"RG{n}_{kind}.dcm" for n in (1, 3) for kind in ("UNCR", "UNCI", "J2KR", "J2KI")}
    assert expected <= names, f"pydicom-data CR files missing: {sorted(expected - names)}"
    for path, body_part in files:
        loaded = load_series([Path(path)])
        result = detector.run(StudyInput("2.25.6", loaded.series))
        name = Path(path).name
        if body_part.upper() == "CHEST":
            assert result.verdict is Verdict.NOT_ASSESSED, name
            assert "not a long-bone radiograph" in result.reason, name
            continue
        assert result.verdict in (Verdict.PRESENT, Verdict.ABSENT), (name, result.reason)
        assert result.probability is not None and 0.0 <= result.probability <= 1.0, name
        assert result.reason, name
        rows, cols = loaded.series.array.shape[1:]
        for finding in result.findings:
            r0, c0, r1, c1 = box_of(finding.region.points)
            assert 0 <= r0 < r1 <= rows - 1 and 0 <= c0 < c1 <= cols - 1, name
