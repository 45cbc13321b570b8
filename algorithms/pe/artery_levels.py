"""The artery-level network: which voxels of the predicted pulmonary arteries are segmental.

A small 3-D U-Net (``levels.onnx``, trained by ``training.pe.train_levels`` on generated scans
whose generator knows each artery's level) reads the embolus network's artery and trunk
probabilities and the vascular window on the model grid and gives each voxel the probability
that it lies in a segmental artery rather than a lobar or main artery or the trunk. The
plugin names an embolus that is not central lobar or segmental by it (docs/algorithms/pe.md,
*Level*): lobar and segmental arteries overlap in width, a radiologist tells them apart by
the branch, and the network sees the branching around each voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from algorithms import packaged_model
from algorithms.pe import inference, postprocess, preprocess

LEVEL_MODEL = "levels.onnx"
LEVEL_CARD = "levels.json"
CHANNELS = 3
"""Artery probability, trunk probability, vascular window."""


def level_input(
    prob: npt.NDArray[np.float32], model_hu: npt.NDArray[np.floating]
) -> npt.NDArray[np.float32]:
    """(CHANNELS, D, H, W) input of the level network from the embolus network's (3, D, H, W)
    output and the model-grid HU."""
    vascular = preprocess.normalise(model_hu)[1]
    return np.stack([prob[postprocess.ARTERY], prob[postprocess.TRUNK], vascular]).astype(
        np.float32
    )


@dataclass(frozen=True)
class ArteryLevels:
    """The loaded level network (onnxruntime)."""

    session: Any
    input_name: str
    sha256: str

    @classmethod
    def load(cls, package: str, device: str) -> ArteryLevels | None:
        """The shipped network, checked against its card's sha256; None when not shipped."""
        if not resources.files(package).joinpath(LEVEL_MODEL).is_file():
            return None
        card = packaged_model.read_card(package, LEVEL_CARD)
        raw = packaged_model.read_checked(package, LEVEL_MODEL, card.get("sha256"))
        session = packaged_model.onnx_session(raw, device)
        name = str(session.get_inputs()[0].name)
        session.run(None, {name: np.zeros((1, CHANNELS, 16, 16, 16), dtype=np.float32)})
        return cls(session, name, str(card["sha256"]))

    def segmental_probability(
        self, prob: npt.NDArray[np.float32], model_hu: npt.NDArray[np.floating]
    ) -> npt.NDArray[np.float32]:
        """(D, H, W) probability that each model voxel lies in a segmental artery."""
        out = inference.predict(self.session, self.input_name, level_input(prob, model_hu))
        segmental: npt.NDArray[np.float32] = out[0]
        return segmental
