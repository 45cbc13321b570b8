"""Tests of the PE plugin's second-stage scorer: which file is loaded, the sha256 check against
model.json, and the patch network run on candidates."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import numpy as np
import pytest

from algorithms.pe import filling_defects, postprocess, preprocess, second_stage, vessel_patches
from algorithms.pe.filling_defects import DefectClassifier
from algorithms.pe.second_stage import PATCH_NETWORK, TREES, PatchNetwork
from tests.algorithms.test_pe_filling_defects import search

PACKAGE = "algorithms.pe"


def _card() -> dict[str, object]:
    card: dict[str, object] = json.loads(
        resources.files(PACKAGE).joinpath("model.json").read_text()
    )
    return card


def test_the_operating_point_was_chosen_with_the_shipped_patch_network() -> None:
    recorded = _card()["second_stage"]
    assert isinstance(recorded, dict) and recorded["file"] == PATCH_NETWORK
    raw = resources.files(PACKAGE).joinpath(PATCH_NETWORK).read_bytes()
    assert recorded["sha256"] == hashlib.sha256(raw).hexdigest()
    loaded = second_stage.load(PACKAGE, _card(), "cpu")
    assert loaded is not None and loaded.file == PATCH_NETWORK and loaded.recorded
    assert isinstance(loaded.scorer, PatchNetwork)


@pytest.mark.parametrize("file", [PATCH_NETWORK, TREES])
def test_a_second_stage_file_other_than_the_evaluated_one_is_refused(file: str) -> None:
    card = {"second_stage": {"file": file, "sha256": "0" * 64}}
    with pytest.raises(RuntimeError, match="does not match"):
        second_stage.load(PACKAGE, card, "cpu")


def test_an_unrecorded_or_chosen_scorer_loads_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unrecorded = second_stage.load(PACKAGE, {}, "cpu")
    assert unrecorded is not None and unrecorded.file == PATCH_NETWORK
    assert not unrecorded.recorded and "not the one recorded" in caplog.text
    trees = second_stage.load(PACKAGE, _card(), "cpu", choice=TREES)
    assert trees is not None and not trees.recorded
    assert isinstance(trees.scorer, DefectClassifier)
    with pytest.raises(ValueError, match="unknown second stage"):
        second_stage.load(PACKAGE, _card(), "cpu", choice="other.onnx")
    assert second_stage.load("algorithms.fracture", {}, "cpu") is None  # none shipped


@pytest.mark.parametrize("file", [PATCH_NETWORK, TREES])
def test_the_operating_point_records_the_second_stage_it_was_chosen_with(file: str) -> None:
    from algorithms.pe.plugin import DEFECT_FLOOR, PulmonaryEmbolismDetector, shift_probability
    from training.pe.evaluate import second_stage_record

    detector = PulmonaryEmbolismDetector(file)
    detector.load("cpu")
    raw = resources.files(PACKAGE).joinpath(file).read_bytes()
    assert second_stage_record(detector) == {
        "file": file,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "candidate_floor": DEFECT_FLOOR,
    }
    point = _card()["operating_point"]
    assert isinstance(point, dict)
    if file == PATCH_NETWORK:  # recorded: its probabilities go onto the network's scale
        on_scale = shift_probability(point["second_stage_threshold"], detector.second_stage_shift)
        assert on_scale == pytest.approx(detector.default_threshold)
    else:  # a comparison runs on its own scale
        assert detector.second_stage_shift == 0.0
    detector.second_stage = None
    assert second_stage_record(detector) is None


@pytest.fixture(scope="module")
def network() -> PatchNetwork:
    return PatchNetwork.from_onnx(
        resources.files(PACKAGE).joinpath(PATCH_NETWORK).read_bytes(), "cpu"
    )


def test_patches_are_scored_in_batches_like_one_by_one(network: PatchNetwork) -> None:
    rng = np.random.default_rng(5)
    n = second_stage.BATCH + 40
    shape = (
        n,
        vessel_patches.channels(network.scales),
        len(vessel_patches.ACROSS_MM),
        len(vessel_patches.ALONG_MM),
    )
    patches = rng.uniform(-1.0, 1.5, shape).astype(np.float32)
    region = ((slice(0, 1), slice(0, 1), slice(0, 1)), np.ones((1, 1, 1), bool))
    regions: list[vessel_patches.Region | None] = [region] * n
    regions[7] = None
    p = network.patch_probabilities(patches, regions)
    assert p.shape == (n,) and p[7] == 0.0
    alone = [
        float(network.patch_probabilities(patches[i : i + 1], [region])[0]) for i in (3, n - 1)
    ]
    assert [p[3], p[n - 1]] == pytest.approx(alone, abs=1e-6)
    assert ((p >= 0.0) & (p <= 1.0)).all()


def _artery_and_vein() -> tuple[np.ndarray, filling_defects.Candidates]:
    """Aerated lung with two parallel vessels along x inside the first stage's artery zone:
    an enhanced artery (300 HU, radius 3 mm) holding a floating 40 HU clot 10 mm long, and a
    vein enhanced less (150 HU, radius 3 mm) all along (the hard false candidate of CTPA)."""
    shape = (60, 80, 80)
    k, i, j = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    artery = np.hypot(k - 30.0, i - 30.0)
    vein = np.hypot(k - 30.0, i - 50.0)
    hu = np.full(shape, -850.0, dtype=np.float32)
    hu[artery <= 3.0] = 300.0
    hu[(artery <= 2.0) & (np.abs(j - 40.0) <= 5.0)] = 40.0
    hu[vein <= 3.0] = 150.0
    grid = preprocess.ModelGrid(origin=(0.5, 0.5, 0.5), step=(2.0, 2.0, 2.0), shape=(30, 40, 40))
    prob = np.zeros((3, *grid.shape), dtype=np.float32)
    mk, mi = np.meshgrid(np.arange(30) * 2.0 + 0.5, np.arange(40) * 2.0 + 0.5, indexing="ij")
    near = (np.hypot(mk - 30.0, mi - 30.0) <= 4.0) | (np.hypot(mk - 30.0, mi - 50.0) <= 4.0)
    prob[postprocess.ARTERY] = near[:, :, None] * 0.9
    return hu, search(hu, prob, grid)


def test_a_clot_in_an_artery_scores_above_a_vein_enhanced_less(network: PatchNetwork) -> None:
    hu, found = _artery_and_vein()
    p = network.candidate_probabilities(hu, (1.0, 1.0, 1.0), found, 300.0)
    centres = [
        (np.argwhere(r[1]).mean(0) + [b.start for b in r[0]]) if r else None
        for r in found.regions()
    ]
    on_clot = [n for n, c in enumerate(centres) if c is not None and abs(c[1] - 30.0) < 4.0]
    on_vein = [n for n, c in enumerate(centres) if c is not None and abs(c[1] - 50.0) < 4.0]
    assert on_clot and on_vein, centres
    assert max(p[on_clot]) > 0.5 > max(p[on_vein])


def test_a_patch_network_whose_input_is_not_whole_views_is_refused() -> None:
    from onnx import TensorProto, helper

    channels = vessel_patches.CHANNELS + 1
    shape: list[str | int] = ["batch", channels, len(vessel_patches.ACROSS_MM)]
    shape.append(len(vessel_patches.ALONG_MM))
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["patches"], ["probability"], keepdims=0)],
        "not_whole_views",
        [helper.make_tensor_value_info("patches", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(RuntimeError, match=f"input has {channels} channels"):
        PatchNetwork.from_onnx(model.SerializeToString(), "cpu")
