"""Tests of the PE plugin's second stage: filling-defect candidates at the input resolution,
their classifier and the merging of nearby defects."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from algorithms.contract import Verdict
from algorithms.pe import filling_defects, plugin, postprocess, preprocess
from algorithms.pe.filling_defects import Defect, DefectClassifier

SHAPE = (60, 80, 80)
"""Input grid of the phantom: 1 mm voxels."""


def _tube_phantom(plug: bool) -> tuple[np.ndarray, np.ndarray, preprocess.ModelGrid]:
    """Aerated lung (-850 HU) with an enhanced artery (300 HU, radius 4 mm) along x, and its
    first-stage maps on a 2 mm grid; ``plug``: a floating 40 HU clot (radius 2.5 mm, 12 mm
    long) in the middle of the artery."""
    k, i, j = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    r = np.hypot(k - 30.0, i - 40.0)
    hu = np.full(SHAPE, -850.0, dtype=np.float32)
    hu[r <= 4.0] = 300.0
    if plug:
        hu[(r <= 2.5) & (np.abs(j - 40.0) <= 6.0)] = 40.0
    grid = preprocess.ModelGrid(origin=(0.5, 0.5, 0.5), step=(2.0, 2.0, 2.0), shape=(30, 40, 40))
    prob = np.zeros((3, *grid.shape), dtype=np.float32)
    mk, mi = np.meshgrid(np.arange(30) * 2.0 + 0.5, np.arange(40) * 2.0 + 0.5, indexing="ij")
    prob[postprocess.ARTERY] = (np.hypot(mk - 30.0, mi - 40.0) <= 4.5)[:, :, None] * 0.9
    return hu, prob, grid


AFFINE = np.array([[0, 0, 1.0, -40], [0, 1.0, 0, -40], [1.0, 0, 0, -30], [0, 0, 0, 1.0]])


def _candidates(plug: bool) -> tuple[np.ndarray, filling_defects.Candidates]:
    hu, prob, grid = _tube_phantom(plug)
    return hu, search(hu, prob, grid)


def search(
    hu: np.ndarray, prob: np.ndarray, grid: preprocess.ModelGrid
) -> filling_defects.Candidates:
    """The candidates of a 1 mm phantom whose trunk enhances to 300 HU."""
    found = filling_defects.find_candidates(
        hu,
        (1.0, 1.0, 1.0),
        prob,
        grid,
        300.0,
        (0.0, 0.0, 0.0),
        AFFINE,
        postprocess.lumen_radius_mm(prob),
    )
    assert found is not None
    return found


def test_a_clot_in_an_enhanced_artery_is_a_candidate() -> None:
    hu, found = _candidates(plug=True)
    plug = np.zeros(SHAPE, dtype=bool)
    plug[found.box] = True
    plug &= hu == 40.0
    hit = np.unique(found.labels[plug[found.box]])
    hit = hit[hit > 0]
    assert len(hit) == 1, hit
    row = found.features[int(hit[0]) - 1]
    named = dict(zip(filling_defects.FEATURES, row, strict=True))
    assert named["mean_hu"] < 100.0 and named["trunk_hu"] == 300.0
    assert named["ring_bright_fraction"] > 0.3  # enhanced lumen around it
    assert 8.0 <= named["extent_long_mm"] <= 20.0
    assert named["stage1_artery_mean"] == pytest.approx(0.9)
    assert named["stage1_lumen_radius_mm"] >= 4.0
    assert named["slice_mm"] == 1.0 and named["pixel_mm"] == 1.0


def test_the_lumen_of_an_artery_without_clot_is_not_a_candidate() -> None:
    _, found = _candidates(plug=False)
    k, i = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    core = np.broadcast_to((np.hypot(k - 30.0, i - 40.0) <= 2.5)[:, :, None], SHAPE)
    assert not (found.labels > 0)[core[found.box]].any()
    assert found.features.shape == (found.count, len(filling_defects.FEATURES))


def test_nothing_is_searched_without_predicted_arteries() -> None:
    hu, prob, grid = _tube_phantom(plug=True)
    prob[:] = 0.0
    assert (
        filling_defects.find_candidates(
            hu, (1.0, 1.0, 1.0), prob, grid, 300.0, (0.0, 0.0, 0.0), AFFINE, prob[0]
        )
        is None
    )


def test_the_ceiling_follows_the_trunk_enhancement() -> None:
    assert filling_defects.ceiling_hu(400.0) == pytest.approx(220.0)
    assert filling_defects.ceiling_hu(110.0) == pytest.approx(75.0)
    assert filling_defects.ceiling_hu(80.0) == filling_defects.MIN_CEILING_HU


def _stump(feature: int, threshold: float, left: float, right: float) -> np.ndarray:
    """A one-split tree as node rows: feature, threshold, left, right, value, is_leaf,
    missing_go_left."""
    return np.array(
        [
            [feature, threshold, 1, 2, 0.0, 0, 1],
            [0, 0, 0, 0, left, 1, 0],
            [0, 0, 0, 0, right, 1, 0],
        ]
    )


def test_classifier_adds_the_leaves_of_its_trees() -> None:
    classifier = DefectClassifier(
        baseline=-1.0, trees=(_stump(0, 2.0, -0.5, 1.5), _stump(3, 0.0, 0.25, -0.25))
    )
    x = np.zeros((3, len(filling_defects.FEATURES)), dtype=np.float32)
    x[:, 0] = [1.0, 3.0, np.nan]  # left, right, missing (goes left)
    x[:, 3] = [1.0, -1.0, 1.0]
    raw = np.array([-1.0 - 0.5 - 0.25, -1.0 + 1.5 + 0.25, -1.0 - 0.5 - 0.25])
    assert classifier.probabilities(x) == pytest.approx(1 / (1 + np.exp(-raw)))
    again = DefectClassifier.from_json(json.loads(json.dumps(classifier.to_json())))
    assert again.probabilities(x) == pytest.approx(classifier.probabilities(x))
    other = classifier.to_json()
    other["features"] = ["something", *other["features"][1:]]
    with pytest.raises(ValueError, match="other features"):
        DefectClassifier.from_json(other)


def test_trained_trees_reproduce_scikit_learn() -> None:
    from training.pe.train_defects import BoostingSettings, fit_classifier

    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, len(filling_defects.FEATURES))).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 5] + rng.normal(0, 0.5, 400)) > 1.0
    classifier = fit_classifier(x, y, BoostingSettings(trees=30))  # checks against sklearn
    p = classifier.probabilities(x)
    assert p[y].mean() > 0.5 > 0.2 > p[~y].mean()


def _defect(p: float, at: tuple[int, int, int]) -> Defect:
    box = tuple(slice(a, a + 2) for a in at)
    return Defect(p, (box[0], box[1], box[2]), np.ones((2, 2, 2), dtype=bool))


def test_nearby_defects_merge_and_distant_ones_stay_apart() -> None:
    merged = filling_defects.merge_nearby(
        [_defect(0.4, (10, 10, 10)), _defect(0.9, (10, 10, 13)), _defect(0.6, (30, 30, 30))]
    )
    assert [round(d.probability, 1) for d in merged] == [0.9, 0.6]
    first = merged[0]
    assert first.mask.sum() == 16
    assert (first.box[2].start, first.box[2].stop) == (10, 15)


def test_the_shipped_trees_still_load_for_comparison() -> None:
    raw = resources.files("algorithms.pe").joinpath("defects.json").read_bytes()
    classifier = DefectClassifier.from_json(json.loads(raw))
    assert len(classifier.trees) >= 50
    assert all(t.shape[1] == 7 and t[:, 5].any() for t in classifier.trees)


def test_candidates_are_kept_by_their_scores_most_probable_first() -> None:
    labels = np.zeros((10, 10, 10), dtype=np.int32)
    labels[1:3, 1:3, 1:3] = 1
    labels[5, 5, 5:8] = 2
    labels[8, 1, 1] = 3
    found = filling_defects.Candidates(
        (slice(20, 30), slice(0, 10), slice(40, 50)),
        labels,
        np.zeros((3, len(filling_defects.FEATURES)), np.float32),
    )
    kept = filling_defects.score(found, np.array([0.6, 0.9, 0.2]), 0.5)
    assert [d.probability for d in kept] == [0.9, 0.6]
    assert kept[0].box == (slice(25, 26), slice(5, 6), slice(45, 48))
    assert kept[0].mask.shape == (1, 1, 3) and kept[0].mask.all()
    assert filling_defects.score(found, np.array([0.6, 0.9, 0.2]), 0.95) == ()


def _analysis_with(defects: tuple[Defect, ...]) -> plugin.Analysis:
    """A 2 mm grid equal to the input grid: a trunk (x 48-72 mm, top at slice 29) and a
    narrow artery running to the patient's right, with a first-stage embolus in it."""
    shape = (40, 48, 48)
    prob = np.zeros((3, *shape), dtype=np.float32)
    prob[postprocess.TRUNK, 10:30, 20:34, 24:36] = 0.9
    prob[postprocess.ARTERY, 10:30, 20:34, 24:36] = 0.9
    prob[postprocess.ARTERY, 20:24, 24:28, 4:30] = 0.9
    prob[postprocess.CLOT, 21:23, 25:27, 8:12] = 0.8
    grid = preprocess.ModelGrid(origin=(0.0, 0.0, 0.0), step=(1.0, 1.0, 1.0), shape=shape)
    affine = np.array([[0, 0, 2.0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1.0]])
    trunk = postprocess.locate_trunk(prob, np.full(shape, 250.0, np.float32), grid, affine)
    assert trunk is not None
    return plugin.Analysis(
        prob=prob,
        zone=postprocess.artery_zone(prob),
        trunk=trunk,
        grid=grid,
        affine=affine,
        input_shape=shape,
        seconds=0.0,
        defects=defects,
    )


def test_second_stage_adds_defects_the_network_missed_and_not_the_ones_it_found() -> None:
    beside_first_stage = _defect(0.95, (21, 25, 12))  # touches the first-stage embolus
    new = _defect(0.9, (21, 25, 20))  # further along the narrow artery, patient right
    weak = _defect(0.3, (21, 25, 26))
    analysis = _analysis_with((beside_first_stage, new, weak))
    found = postprocess.find_emboli(
        analysis.prob,
        analysis.zone,
        analysis.trunk,
        analysis.grid,
        analysis.input_shape,
        analysis.affine,
        0.5,
    )
    assert len(found) == 1
    (added,) = plugin.second_stage_emboli(analysis, analysis.defects, 0.5, found)
    assert added.probability == 0.9 and added.side == "right" and added.level == "segmental"
    assert added.mask[new.box].all() and added.mask.sum() == 8
    assert added.centre_voxel == pytest.approx((21.5, 25.5, 20.5))
    assert added.mask[added.slice_index].any()
    assert plugin.second_stage_emboli(analysis, analysis.defects, 0.95, found) == []


def test_the_study_probability_is_the_highest_of_both_stages() -> None:
    detector = plugin.PulmonaryEmbolismDetector()
    quiet = _analysis_with(())
    assert detector.study_probability(quiet) == pytest.approx(0.8)  # uncalibrated peak
    loud = _analysis_with((_defect(0.97, (21, 25, 20)),))
    assert detector.study_probability(loud) == pytest.approx(0.97)
    result = detector.decide(loud, 0.9)
    assert [f.probability for f in result.findings] == [pytest.approx(0.97)]
    assert "right segmental artery" in result.reason


def test_one_threshold_applies_both_stages_operating_points() -> None:
    card = {"operating_point": {"threshold": 0.78, "second_stage_threshold": 0.89}}
    shift = plugin.second_stage_shift_from_card(card)
    assert shift < 0.0
    assert plugin.shift_probability(0.89, shift) == pytest.approx(0.78)
    assert plugin.shift_probability(1.0, shift) == 1.0
    assert plugin.shift_probability(0.0, shift) == 0.0
    assert plugin.second_stage_shift_from_card({"operating_point": {"threshold": 0.7}}) == 0.0
    assert plugin.second_stage_shift_from_card({}) == 0.0
    detector = plugin.PulmonaryEmbolismDetector()
    detector.second_stage_shift = shift
    under = _analysis_with((_defect(0.86, (21, 25, 20)),))  # under the second stage's 0.89
    assert detector.study_probability(under) == pytest.approx(0.8)  # the network's peak
    assert detector.decide(under, 0.81).verdict is Verdict.ABSENT
    over = _analysis_with((_defect(0.97, (21, 25, 20)),))
    p_over = plugin.shift_probability(0.97, shift)
    assert 0.81 < p_over < 0.97
    result = detector.decide(over, 0.81)
    assert [f.probability for f in result.findings] == [pytest.approx(p_over)]
    assert result.probability == pytest.approx(p_over)
    assert over.defects[0].probability == 0.97  # the analysis keeps the scorer's own
