"""The artery-level network's input, loading and tiled run (algorithms/pe/artery_levels.py)."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any

import numpy as np
import pytest

from algorithms import packaged_model
from algorithms.pe import artery_levels, inference, postprocess, preprocess
from algorithms.pe.artery_levels import CHANNELS, LEVEL_CARD, LEVEL_MODEL, ArteryLevels

PACKAGE = "algorithms.pe"


def test_the_input_is_the_networks_arteries_and_trunk_and_the_vascular_window() -> None:
    prob = np.random.default_rng(0).uniform(size=(3, 4, 5, 6)).astype(np.float32)
    hu = np.full((4, 5, 6), 250.0, dtype=np.float32)
    x = artery_levels.level_input(prob, hu)
    assert x.shape == (CHANNELS, 4, 5, 6) and x.dtype == np.float32
    assert np.array_equal(x[0], prob[postprocess.ARTERY])
    assert np.array_equal(x[1], prob[postprocess.TRUNK])
    assert np.array_equal(x[2], preprocess.normalise(hu)[1])


def test_the_shipped_level_network_matches_its_card() -> None:
    card = json.loads(resources.files(PACKAGE).joinpath(LEVEL_CARD).read_text())
    raw = resources.files(PACKAGE).joinpath(LEVEL_MODEL).read_bytes()
    assert card["sha256"] == hashlib.sha256(raw).hexdigest()
    assert len(raw) < 2_000_000
    assert "synthetic" in card["training"]["data"]
    loaded = ArteryLevels.load(PACKAGE, "cpu")
    assert loaded is not None and loaded.sha256 == card["sha256"]
    prob = np.zeros((3, 20, 24, 28), dtype=np.float32)
    p = loaded.segmental_probability(prob, np.zeros((20, 24, 28), np.float32))
    assert p.shape == (20, 24, 28) and np.all((p >= 0.0) & (p <= 1.0))
    assert ArteryLevels.load("algorithms.fracture", "cpu") is None  # none shipped there


class _FirstChannel:
    """A stand-in session whose one output channel is its input's first channel."""

    def run(self, output_names: Any, feed: dict[str, Any]) -> list[Any]:
        (x,) = feed.values()
        return [x[:, :1] * 1.0]


def test_a_one_channel_model_runs_in_z_slabs_like_the_embolus_network() -> None:
    vol = np.random.default_rng(1).uniform(size=(CHANNELS, 40, 16, 16)).astype(np.float32)
    whole = inference.predict(_FirstChannel(), "x", vol)
    slabs = inference.predict(_FirstChannel(), "x", vol, max_tile_voxels=16 * 16 * 20)
    assert whole.shape == slabs.shape == (1, 40, 16, 16)
    assert np.array_equal(whole, slabs)
    assert np.array_equal(whole[0], vol[0])


def test_a_level_network_other_than_its_card_says_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = packaged_model.read_card
    monkeypatch.setattr(
        packaged_model,
        "read_card",
        lambda package, name="model.json": {**real(package, name), "sha256": "0" * 64},
    )
    with pytest.raises(RuntimeError, match="does not match"):
        ArteryLevels.load(PACKAGE, "cpu")
