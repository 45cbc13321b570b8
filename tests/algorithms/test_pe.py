"""Tests of the PE generator, post-processing and plugin (the real ONNX model)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from algorithms import codes
from algorithms.contract import Algorithm, SeriesInput, StudyInput, Verdict, VolumeGeometry
from algorithms.pe import postprocess, preprocess
from algorithms.pe.artery_levels import ArteryLevels
from algorithms.pe.plugin import Analysis, PulmonaryEmbolismDetector, check_input
from training.pe import synth
from training.pe.evaluate import (
    ScanOutcome,
    auc,
    cached_scan,
    level_confusion,
    make_study,
    network_threshold,
    score,
    sensitivity_at_specificity,
    youden_threshold,
)
from training.pe.evaluate import main as evaluate_main
from training.pe.synth import (
    LOBAR,
    MAIN,
    SEGMENTAL,
    TRUNK,
    ClotSpec,
    ClotTruth,
    Phase,
    SyntheticContrastCT,
    generate_contrast_chest_ct,
)

SHAPE = (100, 224, 224)
SPACING = (2.0, 1.3, 1.3)


@pytest.fixture(scope="module")
def detector() -> PulmonaryEmbolismDetector:
    det = PulmonaryEmbolismDetector()
    det.load("cpu")
    return det


def _case(seed: int, phase: str, clots: list[ClotSpec]) -> SyntheticContrastCT:
    return generate_contrast_chest_ct(
        seed,
        shape=SHAPE,
        spacing_mm=SPACING,
        phase=cast(Phase, phase),
        clots=clots,
    )


def _lumen_hu(ct: SyntheticContrastCT, artery_class: int) -> float:
    lumen = ndimage.binary_erosion(ct.artery_classes == artery_class) & (ct.clot_labels == 0)
    return float(np.median(ct.hu[lumen]))


# --- generator -------------------------------------------------------------------------------


def test_generator_is_deterministic_by_seed() -> None:
    kwargs = {"shape": (60, 160, 160), "spacing_mm": (2.5, 1.8, 1.8), "clots": 2}
    a = generate_contrast_chest_ct(3, **kwargs)  # type: ignore[arg-type]
    b = generate_contrast_chest_ct(3, **kwargs)  # type: ignore[arg-type]
    c = generate_contrast_chest_ct(4, **kwargs)  # type: ignore[arg-type]
    assert a.hu.dtype == np.int16 and a.hu.shape == (60, 160, 160)
    assert np.array_equal(a.hu, b.hu) and a.clots == b.clots
    assert np.array_equal(a.clot_labels, b.clot_labels)
    assert not np.array_equal(a.hu, c.hu)


@pytest.mark.parametrize("phase", ["ctpa", "venous"])
def test_pulmonary_arteries_are_enhanced_as_the_phase_says(phase: str) -> None:
    ct = _case(5, phase, [])
    assert ct.phase == phase and ct.clots == ()
    lo, hi = (150, 500) if phase == "ctpa" else (100, 200)
    assert lo <= ct.artery_hu <= hi
    assert abs(_lumen_hu(ct, TRUNK) - ct.artery_hu) < 25
    classes = np.bincount(ct.artery_classes.ravel(), minlength=5)
    assert np.all(classes[1:] > 100), classes  # trunk, main, lobar and segmental lumen
    k, i, j = (round(c) for c in ct.trunk_centre_voxel)
    assert ct.artery_classes[k, i, j] == TRUNK
    lung = ct.hu[ct.lung_mask]
    assert -900 < np.median(lung) < -750 and ct.hu[:, 0, 0].mean() < -900


def test_unenhanced_scan_has_blood_below_60_hu() -> None:
    ct = _case(6, "non_contrast", [])
    assert _lumen_hu(ct, TRUNK) < 60


@pytest.mark.parametrize(
    ("spec", "classes"),
    [
        (ClotSpec("saddle"), {TRUNK, MAIN}),
        (ClotSpec("central", "left"), {MAIN}),
        (ClotSpec("lobar", "right", occlusive=True), {LOBAR}),
        (ClotSpec("segmental", "left", occlusive=False), {SEGMENTAL}),
    ],
)
def test_clots_are_hypodense_defects_in_the_artery_asked_for(
    spec: ClotSpec, classes: set[int]
) -> None:
    ct = _case(7, "ctpa", [spec])
    (truth,) = ct.clots
    mask = ct.clot_labels == truth.label
    # Partial volume: the >= 0.5 mask of a small clot is smaller than its summed fraction.
    assert 0.4 < mask.sum() * np.prod(SPACING) / truth.volume_mm3 < 1.3
    inside = set(np.unique(ct.artery_classes[mask]).tolist()) - {0}
    assert inside and inside <= classes | {LOBAR, SEGMENTAL, MAIN, TRUNK}
    assert np.bincount(ct.artery_classes[mask], minlength=5)[sorted(classes)].sum() > 0.5 * (
        mask.sum()
    )
    assert truth.level == {"saddle": "central", "central": "central"}.get(spec.kind, spec.kind)
    assert truth.level_by_volume == truth.level  # more than half lies in its own arteries
    # Hypodense against the enhanced lumen, and on the side asked for.
    assert np.median(ct.hu[mask]) < _lumen_hu(ct, TRUNK) - 60
    trunk_x = ct.trunk_centre_voxel[2]
    if spec.kind == "saddle":
        cols = np.argwhere(mask)[:, 2]
        assert truth.side == "both" and cols.min() < trunk_x < cols.max()
    else:
        assert truth.side == spec.side
        assert (truth.centre_voxel[2] < trunk_x) == (spec.side == "right")


def test_clots_within_their_artery_never_reach_back_into_a_more_proximal_one() -> None:
    # Their level is then the most proximal artery they fill, as a radiologist names an
    # embolus; by default an occlusive clot placed at a branch's origin fills part of the
    # parent artery (the shipped models' training data), and the same seeds show it.
    specs = [ClotSpec("segmental", side, occlusive=True) for side in ("right", "left")] + [
        ClotSpec("lobar", "left", occlusive=True)
    ]
    proximal = {"lobar": {TRUNK, MAIN}, "segmental": {TRUNK, MAIN, LOBAR}}
    reaching_back = {True: 0, False: 0}
    for within in (True, False):
        for seed in range(20, 26):
            ct = generate_contrast_chest_ct(
                seed,
                shape=SHAPE,
                spacing_mm=SPACING,
                phase="ctpa",
                clots=specs,
                clots_within_artery=within,
            )
            assert len(ct.clots) >= 2
            for truth in ct.clots:
                filled = np.unique(ct.artery_classes[ct.clot_labels == truth.label])
                reaching_back[within] += bool(set(filled.tolist()) & proximal[truth.level])
    assert reaching_back[True] == 0 and reaching_back[False] >= 3, reaching_back


def test_second_stage_training_draws_a_share_of_its_scans_with_clots_within_their_artery() -> None:
    from training.pe.train_defects import training_scan

    proximal = {"central": set(), "lobar": {TRUNK, MAIN}, "segmental": {TRUNK, MAIN, LOBAR}}
    default, within = training_scan(400000), training_scan(400000, clots_within_artery_share=1.0)
    assert [t.level for t in within.clots] == [t.level for t in default.clots] != []
    assert (within.clot_labels > 0).sum() < (default.clot_labels > 0).sum()
    for truth in within.clots:
        filled = set(np.unique(within.artery_classes[within.clot_labels == truth.label]).tolist())
        assert not filled & proximal[truth.level], (truth.level, filled)
    # the share is drawn apart from the scan: a scan outside it is the default scan
    assert np.array_equal(training_scan(400000, clots_within_artery_share=0.2).hu, default.hu)


def test_the_evaluation_keeps_scans_with_clots_within_their_artery_apart(tmp_path: Path) -> None:
    within = cached_scan(700001, tmp_path, clots_within_artery=True)
    default = cached_scan(700001, tmp_path)
    assert len(list(tmp_path.glob("pe_eval_*_within_700001.pkl"))) == 1
    assert len(list(tmp_path.glob("pe_eval_*.pkl"))) == 2
    assert [t.level for t in within.clots] == [t.level for t in default.clots]
    assert (within.hu != default.hu).mean() < 0.001  # only around the clots
    assert (within.clot_labels > 0).sum() < (default.clot_labels > 0).sum()  # clipped
    again = cached_scan(700001, tmp_path, clots_within_artery=True)
    assert np.array_equal(again.clot_labels, within.clot_labels)


def test_the_shipped_operating_point_is_not_chosen_on_clots_within_their_artery(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--split", "validation", "--write-operating-point", "--clots-within-artery"])
    assert exit_.value.code == 2 and "not with --clots-within-artery" in capsys.readouterr().err


@pytest.mark.parametrize("split", ["confirmation", "test"])
def test_an_operating_point_is_never_chosen_on_a_split_that_only_measures(
    split: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--split", split, "--write-operating-point"])
    assert exit_.value.code == 2 and f"{split} only measures" in capsys.readouterr().err


def test_a_specificity_floor_is_a_choice_of_operating_point_between_0_and_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (
        ["--min-specificity", "0.95"],
        ["--write-operating-point", "--min-specificity", "95"],
    ):
        with pytest.raises(SystemExit) as exit_:
            evaluate_main(["--split", "tuning", *argv])
        assert exit_.value.code == 2 and "--min-specificity" in capsys.readouterr().err


def test_the_level_by_volume_is_where_most_of_a_clot_lies_ties_to_the_more_central() -> None:
    classes = np.array([LOBAR, SEGMENTAL, SEGMENTAL, 0, 0, 0], dtype=np.uint8)
    assert synth._level_by_volume(classes) == "segmental"  # smaller arteries (0) not counted
    assert synth._level_by_volume(np.array([TRUNK, MAIN, LOBAR, LOBAR], np.uint8)) == "central"
    assert synth._level_by_volume(np.zeros(3, np.uint8)) is None


def test_occlusion_starves_the_distal_tree_of_contrast() -> None:
    open_ = _case(8, "ctpa", [])
    occluded = _case(8, "ctpa", [ClotSpec("lobar", "right", occlusive=True)])
    assert occluded.clots[0].occlusive
    changed = (occluded.artery_classes == SEGMENTAL) & (occluded.hu < open_.hu - 60)
    assert changed.sum() > 20


def test_synth_and_plugin_do_not_import_torch() -> None:
    code = (
        "import sys, training.pe.synth, algorithms.pe.plugin; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- model files, pre- and post-processing ------------------------------------------------


def test_model_card_matches_the_shipped_model() -> None:
    package = resources.files("algorithms.pe")
    model = package.joinpath("model.onnx").read_bytes()
    card = json.loads(package.joinpath("model.json").read_text())
    assert card["sha256"] == hashlib.sha256(model).hexdigest()
    assert len(model) < 2_000_000
    assert card["input"]["spacing_mm"] == preprocess.MODEL_SPACING_MM
    assert card["input"]["windows"] == [
        list(preprocess.LUNG_WINDOW),
        list(preprocess.VASCULAR_WINDOW),
    ]
    point = card["operating_point"]
    split = point.get("split", "validation")  # 0.4.0's card predates the key
    assert split in ("tuning", "validation") and f"on the {split} split" in point["criterion"]
    assert 0.0 < point["threshold"] < 1.0
    assert point["threshold"] <= point["second_stage_threshold"] < 1.0


def test_normalise_gives_a_lung_and_a_vascular_channel() -> None:
    hu = np.array([[[-1000.0, 40.0, 300.0, 2000.0]]], dtype=np.float32)
    x = preprocess.normalise(hu)
    assert x.shape == (2, 1, 1, 4)
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 0, 3] == 1.0
    assert x[1, 0, 0, 0] == -1.0 and -1.0 < x[1, 0, 0, 1] < x[1, 0, 0, 2] < 1.0


def _prob_maps(shape: tuple[int, int, int]) -> np.ndarray:
    """Embolus, artery and trunk maps on a 2 mm grid: a trunk at x 30, an artery to the right."""
    prob = np.zeros((3, *shape), dtype=np.float32)
    prob[postprocess.TRUNK, 10:30, 20:34, 24:36] = 0.9  # trunk, top at slice 29
    prob[postprocess.ARTERY, 10:30, 20:34, 24:36] = 0.9
    prob[postprocess.ARTERY, 20:24, 24:28, 4:30] = 0.9  # a 4-voxel (8 mm) wide artery
    return prob


def test_emboli_are_located_with_level_side_and_outline() -> None:
    shape = (40, 48, 48)
    prob = _prob_maps(shape)
    prob[postprocess.CLOT, 21:23, 25:27, 8:12] = 0.8  # in the narrow artery, patient right
    grid = preprocess.ModelGrid(origin=(0.0, 0.0, 0.0), step=(1.0, 1.0, 1.0), shape=shape)
    affine = np.array([[0, 0, 2.0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1.0]])
    model_hu = np.full(shape, 250.0, dtype=np.float32)
    trunk = postprocess.locate_trunk(prob, model_hu, grid, affine)
    assert trunk is not None and trunk.median_hu == 250.0
    assert trunk.bifurcation_x_lps == pytest.approx(2.0 * 29.5, abs=1.0)
    zone = postprocess.artery_zone(prob)
    assert postprocess.study_probability(prob, zone) == pytest.approx(0.8)
    (embolus,) = postprocess.find_emboli(prob, zone, trunk, grid, shape, affine, 0.5)
    assert embolus.side == "right" and embolus.level == "segmental" and not embolus.in_trunk
    assert embolus.probability == pytest.approx(0.8)
    assert embolus.centre_voxel == pytest.approx((21.5, 25.5, 9.5))
    assert embolus.mask.sum() == 16 and embolus.volume_mm3 == pytest.approx(16 * 8.0)
    cols = [p[0] for p in embolus.outline]
    assert embolus.outline[0] == embolus.outline[-1] and min(cols) < 9.5 < max(cols)
    assert postprocess.find_emboli(prob, zone, trunk, grid, shape, affine, 0.9) == []


def test_the_level_network_names_lobar_or_segmental_and_never_overrides_central() -> None:
    segmental = np.zeros((4, 4, 4), dtype=np.float32)
    segmental[:2] = 0.9
    upper = (np.array([0, 1]), np.array([0, 0]), np.array([0, 0]))
    lower = (np.array([2, 3]), np.array([0, 0]), np.array([0, 0]))
    asked: list[int] = []

    def level_map() -> npt.NDArray[np.float32]:
        asked.append(1)
        return segmental

    assert postprocess.branch_level("central", level_map, upper) == "central"
    assert not asked  # a central embolus never runs the level network
    assert postprocess.branch_level("lobar", level_map, upper) == "segmental"
    assert postprocess.branch_level("segmental", level_map, lower) == "lobar"
    assert len(asked) == 2
    assert postprocess.branch_level("segmental", None, lower) == "segmental"
    # The same embolus as above, in an artery the level network calls lobar.
    shape = (40, 48, 48)
    prob = _prob_maps(shape)
    prob[postprocess.CLOT, 21:23, 25:27, 8:12] = 0.8
    grid = preprocess.ModelGrid(origin=(0.0, 0.0, 0.0), step=(1.0, 1.0, 1.0), shape=shape)
    affine = np.array([[0, 0, 2.0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1.0]])
    trunk = postprocess.locate_trunk(prob, np.full(shape, 250.0, np.float32), grid, affine)
    assert trunk is not None
    zone = postprocess.artery_zone(prob)
    lobar = np.zeros(shape, dtype=np.float32)
    (embolus,) = postprocess.find_emboli(
        prob, zone, trunk, grid, shape, affine, 0.5, segmental=lambda: lobar
    )
    assert embolus.level == "lobar" and embolus.side == "right"
    (embolus,) = postprocess.find_emboli(
        prob, zone, trunk, grid, shape, affine, 0.5, segmental=lambda: lobar + 0.7
    )
    assert embolus.level == "segmental"


def test_a_clot_across_the_bifurcation_is_central_and_bilateral() -> None:
    shape = (40, 48, 48)
    prob = _prob_maps(shape)
    prob[postprocess.CLOT, 26:29, 24:30, 20:42] = 0.9  # spans x 40-82 mm, trunk top at 59
    grid = preprocess.ModelGrid(origin=(0.0, 0.0, 0.0), step=(1.0, 1.0, 1.0), shape=shape)
    affine = np.array([[0, 0, 2.0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1.0]])
    trunk = postprocess.locate_trunk(prob, np.full(shape, 200.0, np.float32), grid, affine)
    assert trunk is not None
    zone = postprocess.artery_zone(prob) | (prob[postprocess.CLOT] > 0)
    (embolus,) = postprocess.find_emboli(prob, zone, trunk, grid, shape, affine, 0.5)
    assert embolus.level == "central" and embolus.side == "both"


def test_lumen_radius_is_the_distance_transform_of_the_whole_grid() -> None:
    """Measured on the lumen's bounding box (a speed-up), it equals the transform of the whole
    model grid, for lumens inside the grid and lumens that touch its faces."""
    rng = np.random.default_rng(5)
    for case in range(6):
        lumen = ndimage.gaussian_filter(rng.normal(size=(40, 50, 60)), 2.5) > 0.08
        if case % 2:
            lumen[:, :6] = lumen[:, -6:] = lumen[:4] = False  # away from some faces
        prob = np.zeros((3, *lumen.shape), dtype=np.float32)
        prob[postprocess.ARTERY] = lumen
        whole = ndimage.distance_transform_edt(lumen).astype(np.float32)
        expected = whole * np.float32(preprocess.MODEL_SPACING_MM)
        assert np.array_equal(postprocess.lumen_radius_mm(prob), expected)
    empty = np.zeros((3, 8, 8, 8), dtype=np.float32)
    assert not postprocess.lumen_radius_mm(empty).any()


def test_level_comes_from_the_lumen_radius_and_the_distance_to_the_bifurcation() -> None:
    assert postprocess.level_of(3.0, in_trunk=True) == "central"
    assert postprocess.level_of(10.0, in_trunk=False) == "central"
    assert postprocess.level_of(7.0, in_trunk=False) == "lobar"
    assert postprocess.level_of(7.0, in_trunk=False, gap_mm=4.0) == "central"
    assert postprocess.level_of(7.0, in_trunk=False, gap_mm=12.0) == "lobar"
    assert postprocess.level_of(3.5, in_trunk=False) == "segmental"
    x = np.array([10.0, 14.0, 20.0])
    assert postprocess.bifurcation_gap(x, 0.0) == 10.0
    assert postprocess.bifurcation_gap(x, 30.0) == 10.0
    assert postprocess.bifurcation_gap(x, 12.0) == 0.0


def test_side_of_a_central_embolus_needs_reach_to_both_sides_for_a_saddle() -> None:
    saddle = np.linspace(-22.0, 6.0, 30)
    assert postprocess.side_of(saddle, "central", 0.0) == "both"
    right_main = np.linspace(-40.0, 2.0, 30)  # reaches across by the artery's radius only
    assert postprocess.side_of(right_main, "central", 0.0) == "right"
    left_main = np.linspace(-3.0, 25.0, 30)
    assert postprocess.side_of(left_main, "central", 0.0) == "left"
    assert postprocess.side_of(np.linspace(-3.0, 3.0, 9), "central", 0.0, in_trunk=True) is None
    assert postprocess.side_of(np.linspace(-60.0, -50.0, 9), "lobar", 0.0) == "right"
    assert postprocess.side_of(saddle, "segmental", 0.0) == "right"  # median x decides


def test_calibration_is_fitted_by_logistic_regression_on_the_mass() -> None:
    truth = postprocess.Calibration(intercept=1.0, slope=2.0)
    rng = np.random.default_rng(0)
    masses = np.exp(rng.uniform(np.log(0.02), np.log(10.0), 4000))
    labels = rng.uniform(size=masses.size) < [truth.probability(m) for m in masses]
    fitted = postprocess.fit_calibration(masses, labels)
    assert fitted.intercept == pytest.approx(1.0, abs=0.2)
    assert fitted.slope == pytest.approx(2.0, abs=0.2)
    probabilities = [fitted.probability(m) for m in (0.0, 0.1, 1.0, 10.0)]
    assert probabilities == sorted(probabilities) and 0.0 < probabilities[0] < probabilities[-1] < 1
    with pytest.raises(ValueError, match="emboli"):
        postprocess.fit_calibration([0.1, 0.2], [True, True])


def test_calibrated_probabilities_rank_components_by_mass() -> None:
    shape = (40, 48, 48)
    prob = _prob_maps(shape)
    prob[postprocess.CLOT, 21:23, 25:27, 8:12] = 1.0  # 16 voxels, 0.128 mL
    prob[postprocess.CLOT, 12:16, 22:26, 26:30] = 1.0  # 64 voxels in the trunk, 0.512 mL
    grid = preprocess.ModelGrid(origin=(0.0, 0.0, 0.0), step=(1.0, 1.0, 1.0), shape=shape)
    affine = np.array([[0, 0, 2.0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1.0]])
    trunk = postprocess.locate_trunk(prob, np.full(shape, 250.0, np.float32), grid, affine)
    assert trunk is not None
    zone = postprocess.artery_zone(prob)
    calibration = postprocess.Calibration(intercept=0.5, slope=1.5)
    p_large, p_small = calibration.probability(0.512), calibration.probability(0.128)
    assert postprocess.study_probability(prob, zone, calibration) == pytest.approx(p_large)
    assert postprocess.study_probability(prob, zone) == 1.0  # saturated peaks tell nothing
    found = postprocess.find_emboli(prob, zone, trunk, grid, shape, affine, 0.0, calibration)
    assert [e.probability for e in found] == pytest.approx([p_large, p_small])
    assert [e.mass_ml for e in found] == pytest.approx([0.512, 0.128])
    assert found[0].in_trunk and found[0].level == "central" and found[1].level == "segmental"
    between = (p_large + p_small) / 2
    (only,) = postprocess.find_emboli(prob, zone, trunk, grid, shape, affine, between, calibration)
    assert only.probability == pytest.approx(p_large)
    empty = np.zeros_like(prob)
    empty[1:] = prob[1:]
    assert postprocess.study_probability(empty, zone, calibration) == pytest.approx(
        calibration.probability(0.0)
    )


def test_auc_and_youden_threshold() -> None:
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auc([0.5], [0.5]) == 0.5
    assert 0.2 < youden_threshold([0.9, 0.8, 0.7], [0.1, 0.2, 0.3]) <= 0.7


def test_a_specificity_floor_chooses_the_most_sensitive_threshold_that_keeps_it() -> None:
    positives = [0.95, 0.9, 0.6, 0.3]
    negatives = [0.1, 0.2, 0.4, 0.5, 0.7]
    # Youden J is highest between 0.5 and 0.6 (3/4 + 4/5); at least 100 % specificity needs
    # a threshold above 0.7, which keeps 2 of 4.
    assert youden_threshold(positives, negatives) == pytest.approx(0.55)
    assert youden_threshold(positives, negatives, 1.0) == pytest.approx(0.8)
    assert youden_threshold(positives, negatives, 0.8) == pytest.approx(0.55)
    # The network's threshold by the same criterion: the second stage (at 0.9) flags the
    # PE-free study at 0.5 and the positive at 0.3, so specificity 80 % is the most there is;
    # it takes a threshold in (0.7, 0.9] (3 of 4), where Youden J takes (0.4, 0.6] (4 of 4
    # at 60 %).
    network = [0.95, 0.9, 0.6, 0.3, 0.1, 0.2, 0.4, 0.5, 0.7]
    second = [0.0, 0.0, 0.0, 0.99, 0.0, 0.0, 0.0, 0.95, 0.0]
    is_pe = [True] * 4 + [False] * 5
    assert network_threshold(network, second, is_pe, 0.9, 0.8) == pytest.approx(0.8)
    assert network_threshold(network, second, is_pe, 0.9) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="specificity asked for"):
        network_threshold(network, second, is_pe, 0.9, 0.9)


def test_the_networks_threshold_is_the_middle_of_its_widest_range_of_maximum_j() -> None:
    network = [0.95, 0.70, 0.20, 0.10, 0.40, 0.60]
    second = [0.0, 0.0, 0.99, 0.99, 0.2, 0.1]
    is_pe = [True, True, True, True, False, False]
    # The second stage (at 0.9) finds the positives at 0.20 and 0.10; the network must take
    # 0.70 and 0.95 and not 0.60: every threshold in (0.60, 0.70] does.
    assert network_threshold(network, second, is_pe, 0.9) == pytest.approx(0.65)
    # When the second stage also finds the one at 0.70, the range is (0.60, 0.95].
    second[1] = 0.95
    assert network_threshold(network, second, is_pe, 0.9) == pytest.approx(0.775)
    # Two ranges of the same J, (0.1, 0.4] and (0.5, 0.9]: the wider.
    assert network_threshold(
        [0.9, 0.5, 0.4, 0.1], [0.0] * 4, [True, False, True, False], 0.9
    ) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="with and without"):
        network_threshold([0.9], [0.0], [True], 0.9)


def _truth(label: int, level: str) -> ClotTruth:
    return ClotTruth(label, (0.0, 0.0, 0.0), cast(Any, level), "right", "", True, 100.0)


def test_the_level_confusion_counts_detected_emboli_by_true_and_named_level() -> None:
    truths = (_truth(1, "central"), _truth(2, "lobar"), _truth(3, "segmental"))
    outcome = ScanOutcome(
        seed=1,
        phase="ctpa",
        truths=truths,
        verdict=Verdict.PRESENT,
        probability=0.9,
        detected=[True, True, False],
        side_ok=[True, True, None],
        level_ok=[True, False, None],
        levels_named=["central", "central", None],
        spans_levels=[True, True, False],
        false_findings=0,
        seconds=1.0,
        reason="",
    )
    header, columns, central, lobar, segmental, spanning = level_confusion([outcome])
    assert "true level in rows" in header
    assert columns.split() == ["central", "lobar", "segmental"]
    assert central.split() == ["central", "1", "0", "0"]
    assert lobar.split() == ["lobar", "1", "0", "0"]  # the lobar clot named central
    assert segmental.split() == ["segmental", "0", "0", "0"]  # not detected: not counted
    assert spanning.endswith("2 of 2 detected")


def test_sensitivity_at_a_specificity_is_a_point_of_the_roc_curve() -> None:
    negatives = [0.1, 0.2, 0.5, 0.05, 0.15, 0.12, 0.11, 0.13, 0.14, 0.16]
    # 0.3 lets one negative of ten through (specificity 90 %) and finds every positive.
    assert sensitivity_at_specificity([0.9, 0.8, 0.3], negatives, 0.9) == (1.0, 0.3)
    # Specificity 100 % needs a threshold above 0.5: two positives of three.
    assert sensitivity_at_specificity([0.9, 0.8, 0.3], negatives, 1.0) == (2 / 3, 0.8)


# --- plugin ------------------------------------------------------------------------------------


def test_plugin_satisfies_the_algorithm_protocol() -> None:
    assert isinstance(PulmonaryEmbolismDetector(), Algorithm)
    info = PulmonaryEmbolismDetector.info
    assert info.name == "pe" and info.modalities == frozenset({"CT"})
    assert info.target == codes.PULMONARY_EMBOLISM and info.clinical_use is False
    assert "not for clinical use" in info.intended_use.lower()
    assert "synthetic" in info.intended_use.lower()


def test_run_before_load_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="load"):
        PulmonaryEmbolismDetector().run(make_study(_case(1, "ctpa", [])))


def _distance_mm(point: tuple[float, ...], mask: np.ndarray) -> float:
    voxels = np.argwhere(mask).astype(float)
    return float(np.min(np.linalg.norm((voxels - np.array(point)) * np.array(SPACING), axis=1)))


POSITIVES = [
    (101, "ctpa", ClotSpec("lobar", "right", occlusive=True), "right", "lobar"),
    (102, "ctpa", ClotSpec("saddle"), "both", "central"),
    (103, "venous", ClotSpec("central", "left", occlusive=False), "left", "central"),
]


@pytest.mark.parametrize(("seed", "phase", "spec", "side", "level"), POSITIVES)
def test_plugin_flags_an_embolus_where_it_is(
    detector: PulmonaryEmbolismDetector,
    seed: int,
    phase: str,
    spec: ClotSpec,
    side: str,
    level: str,
) -> None:
    ct = _case(seed, phase, [spec])
    result = detector.run(make_study(ct, seed))
    assert result.verdict is Verdict.PRESENT, result.reason
    assert result.probability is not None and result.probability >= detector.default_threshold
    truth = ct.clot_labels > 0
    best = min(result.findings, key=lambda f: _distance_mm(f.centre_voxel, truth))
    assert _distance_mm(best.centre_voxel, truth) < 6.0
    assert best.mask is not None and (best.mask & truth).any()
    assert best.finding_type == codes.PULMONARY_EMBOLISM
    qualifiers = {q.name: q.value for q in best.qualifiers}
    assert (
        qualifiers[codes.LATERALITY]
        == {
            "right": codes.RIGHT,
            "left": codes.LEFT,
            "both": codes.BILATERAL,
        }[side]
    )
    assert (
        qualifiers[codes.TOPOGRAPHICAL_MODIFIER]
        == {
            "central": codes.CENTRAL,
            "lobar": codes.LOBAR,
        }[level]
    )
    assert truth[best.region.slice_index].any()
    top = result.findings[0]
    assert (
        result.reason.startswith("suspected PE, ") and f"p={top.probability:.2f}" in result.reason
    )
    assert side.replace("both", "saddle") in result.reason
    outcome = score(ct, result, seed, 0.0)
    assert outcome.detected == [True] and outcome.level_ok == [True]
    assert outcome.levels_named == [level] and outcome.spans_levels == [False]
    assert [f.tracking_id for f in result.findings] == [
        f"Embolus {n}" for n in range(1, len(result.findings) + 1)
    ]


def test_second_stage_finds_a_segmental_embolus_the_network_misses(
    detector: PulmonaryEmbolismDetector,
) -> None:
    """A regression case at the resolution PACS send (0.95 mm pixels, 1.25 mm slices): an
    occlusive right segmental embolus that the 2 mm network alone calls absent."""
    ct = generate_contrast_chest_ct(
        132,
        shape=(200, 320, 320),
        spacing_mm=(1.25, 0.95, 0.95),
        phase="ctpa",
        clots=[ClotSpec("segmental", "right", occlusive=True)],
    )
    study = make_study(ct, 132)
    result = detector.run(study)
    assert result.verdict is Verdict.PRESENT, result.reason
    truth = ct.clot_labels > 0
    (hit,) = [f for f in result.findings if f.mask is not None and (f.mask & truth).any()]
    assert {q.name: q.value for q in hit.qualifiers}[codes.LATERALITY] == codes.RIGHT
    network_only = PulmonaryEmbolismDetector()
    network_only.load("cpu")
    network_only.second_stage = None
    assert network_only.run(study).verdict is Verdict.ABSENT


@pytest.mark.parametrize(("seed", "phase"), [(111, "ctpa"), (112, "venous")])
def test_plugin_says_absent_for_an_embolus_free_scan(
    detector: PulmonaryEmbolismDetector, seed: int, phase: str
) -> None:
    result = detector.run(make_study(_case(seed, phase, []), seed))
    assert result.verdict is Verdict.ABSENT, [
        (f.centre_voxel, f.probability) for f in result.findings
    ]
    assert result.findings == ()
    assert result.probability is not None and result.probability < detector.default_threshold
    assert "no pulmonary embolism" in result.reason.lower()


def test_the_level_network_runs_once_and_only_for_an_embolus_that_is_not_central(
    detector: PulmonaryEmbolismDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert detector.levels is not None
    runs: list[int] = []
    real = ArteryLevels.segmental_probability

    def counted(
        levels: ArteryLevels, prob: npt.NDArray[np.float32], hu: npt.NDArray[np.floating]
    ) -> npt.NDArray[np.float32]:
        runs.append(1)
        return real(levels, prob, hu)

    monkeypatch.setattr(ArteryLevels, "segmental_probability", counted)
    for seed, phase, spec in [(111, "ctpa", None), (102, "ctpa", ClotSpec("saddle"))]:
        analysis = detector.analyse(make_study(_case(seed, phase, [spec] if spec else []), seed))
        assert isinstance(analysis, Analysis)
        detector.decide(analysis, detector.default_threshold)
        assert not runs and not analysis.level_cache  # absent, or central only
    seed, phase, spec, _, _ = POSITIVES[0]  # lobar
    analysis = detector.analyse(make_study(_case(seed, phase, [spec]), seed))
    assert isinstance(analysis, Analysis)
    first = detector.decide(analysis, detector.default_threshold)
    again = detector.decide(analysis, detector.default_threshold)
    assert len(runs) == 1 and set(analysis.level_cache) == {"segmental"}
    assert [f.qualifiers for f in first.findings] == [f.qualifiers for f in again.findings]
    assert codes.LOBAR in {q.value for f in first.findings for q in f.qualifiers}


def _with_threshold(study: StudyInput, threshold: float) -> StudyInput:
    return dataclasses.replace(study, threshold=threshold)


def test_the_studys_threshold_overrides_the_operating_point(
    detector: PulmonaryEmbolismDetector,
) -> None:
    seed, phase, spec, _, _ = POSITIVES[0]
    study = make_study(_case(seed, phase, [spec]), seed)
    default = detector.run(study)
    assert default.verdict is Verdict.PRESENT and default.probability is not None
    lenient = detector.run(_with_threshold(study, default.probability * 0.9))
    assert lenient.verdict is Verdict.PRESENT and lenient.probability == default.probability
    strict = detector.run(_with_threshold(study, min(0.9999, (default.probability + 1) / 2)))
    assert strict.verdict is Verdict.ABSENT and strict.probability == default.probability


def test_unenhanced_scan_is_not_assessed(detector: PulmonaryEmbolismDetector) -> None:
    result = detector.run(make_study(_case(121, "non_contrast", []), 121))
    assert result.verdict is Verdict.NOT_ASSESSED
    assert "contrast" in result.reason


def _study(array: np.ndarray, affine: np.ndarray | None = None, **header: str) -> StudyInput:
    if affine is None:
        affine = np.array([[0, 0, 1.3, 0], [0, 1.3, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1.0]])
    geometry = VolumeGeometry(affine, (array.shape[0], array.shape[1], array.shape[2]), "1.2")
    series = SeriesInput("2.25.1", array.astype(np.float32), geometry, {"Modality": "CT", **header})
    return StudyInput("2.25.2", series)


@pytest.mark.parametrize(
    ("header", "affine", "reason"),
    [
        ({"Modality": "MR"}, None, "needs CT"),
        ({"ImageType": "ORIGINAL\\PRIMARY\\LOCALIZER"}, None, "localizer"),
        ({"SliceThickness": "5"}, None, "5.0 mm thick"),
        ({}, np.diag([4.0, 1.3, 1.3, 1.0])[[2, 1, 0, 3]], "4.0 mm thick"),
        ({}, np.array([[2.0, 0, 0, 0], [0, 0, 1.3, 0], [0, 1.3, 0, 0], [0, 0, 0, 1.0]]), "axial"),
    ],
)
def test_unsuitable_series_are_not_assessed_with_the_reason(
    detector: PulmonaryEmbolismDetector,
    header: dict[str, str],
    affine: np.ndarray | None,
    reason: str,
) -> None:
    array = np.full((80, 160, 160), -1000.0)
    array[:, 30:130, 30:130] = 40.0
    result = detector.run(_study(array, affine, **header))
    assert result.verdict is Verdict.NOT_ASSESSED
    assert reason in result.reason


def test_check_input_rejects_short_scans_and_non_hu_values() -> None:
    array = np.full((80, 160, 160), -1000.0, dtype=np.float32)
    array[:, 30:130, 30:130] = 40.0
    axial = np.array([[0, 0, 1.3, 0], [0, 1.3, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1.0]])
    assert check_input({"Modality": "CT"}, array, axial) == ""
    assert "20 slices" in check_input({"Modality": "CT"}, array[:20], axial)
    assert "shorter" in check_input({"Modality": "CT"}, array[:45], axial)
    assert "Hounsfield" in check_input({"Modality": "CT"}, array + 2000.0, axial)


def test_a_head_ct_without_lungs_is_not_assessed(detector: PulmonaryEmbolismDetector) -> None:
    array = np.full((80, 160, 160), -1000.0)
    yy, xx = np.mgrid[:160, :160]
    array[:, (yy - 80) ** 2 + (xx - 80) ** 2 < 60**2] = 35.0
    result = detector.run(_study(array))
    assert result.verdict is Verdict.NOT_ASSESSED
    assert "No aerated lung" in result.reason
