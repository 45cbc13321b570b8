"""The second stage's candidate scorer: which one the plugin runs, and loading it.

Two scorers give each filling-defect candidate (``filling_defects.find_candidates``) the
probability that it is an embolus:

- ``PatchNetwork`` (``defects_cnn.onnx``, shipped from version 0.3.0): a small 2-D CNN on the
  candidate's vessel-aligned patches (``vessel_patches``), trained by
  ``training.pe.train_defect_cnn``. It sees the artery's own course, which is what tells a
  partial clot in a small artery from a vein or a branch point (docs/algorithms/pe.md).
- ``filling_defects.DefectClassifier`` (``defects.json``, 0.2.0): gradient-boosted trees on
  26 hand-made features of each candidate, kept for comparison
  (``python -m training.pe.evaluate --second-stage defects.json``).

``model.json`` records under ``second_stage`` the file its operating point was chosen with and
its sha256; the plugin runs that one and refuses a file whose sha256 differs. A file not
recorded there (a comparison, or a scorer retrained but not evaluated) runs with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from algorithms import packaged_model
from algorithms.pe import filling_defects, vessel_patches

logger = logging.getLogger(__name__)

PATCH_NETWORK = "defects_cnn.onnx"
TREES = "defects.json"
FILES = (PATCH_NETWORK, TREES)
"""Second-stage files the plugin knows, preferred first when model.json records none."""
BATCH = 256
"""Candidates per network run (a scan has at most ``filling_defects.MAX_CANDIDATES``)."""


class CandidateScorer(Protocol):
    def candidate_probabilities(
        self,
        hu: npt.NDArray[np.float32],
        spacing_mm: tuple[float, float, float],
        candidates: filling_defects.Candidates,
        trunk_hu: float,
    ) -> npt.NDArray[np.float64]:
        """Per candidate of ``candidates`` (found in the input volume ``hu``), the
        probability that it is an embolus."""
        ...


@dataclass(frozen=True)
class PatchNetwork:
    """The CNN on vessel-aligned patches, run by onnxruntime; its output is the probability
    averaged over the patch's mirror images."""

    session: Any
    input_name: str
    scales: int
    """The patches' scales (``vessel_patches.SCALES``), read from the network's input
    channels: 1 for 0.3.0's CNN."""

    @classmethod
    def from_onnx(cls, model: bytes, device: str) -> PatchNetwork:
        session = packaged_model.onnx_session(model, device)
        first = session.get_inputs()[0]
        name = str(first.name)
        channels = first.shape[1]
        if not isinstance(channels, int) or channels % vessel_patches.CHANNELS:
            raise RuntimeError(f"pe: second-stage network input has {channels!r} channels")
        scales = channels // vessel_patches.CHANNELS
        shape = (1, channels, len(vessel_patches.ACROSS_MM), len(vessel_patches.ALONG_MM))
        session.run(None, {name: np.zeros(shape, dtype=np.float32)})
        return cls(session, name, scales)

    def candidate_probabilities(
        self,
        hu: npt.NDArray[np.float32],
        spacing_mm: tuple[float, float, float],
        candidates: filling_defects.Candidates,
        trunk_hu: float,
    ) -> npt.NDArray[np.float64]:
        regions = candidates.regions()
        patches = vessel_patches.vessel_patches(hu, spacing_mm, regions, trunk_hu, self.scales)
        return self.patch_probabilities(patches, regions)

    def patch_probabilities(
        self,
        patches: npt.NDArray[np.float32],
        regions: Sequence[vessel_patches.Region | None],
    ) -> npt.NDArray[np.float64]:
        """The network's probability of each patch; 0 where the candidate has no region."""
        p = np.zeros(len(patches), dtype=np.float64)
        for start in range(0, len(patches), BATCH):
            (out,) = self.session.run(None, {self.input_name: patches[start : start + BATCH]})
            p[start : start + BATCH] = np.asarray(out, dtype=np.float64).reshape(-1)
        p[[n for n, r in enumerate(regions) if r is None]] = 0.0
        return p


@dataclass(frozen=True)
class LoadedScorer:
    file: str
    sha256: str
    scorer: CandidateScorer
    recorded: bool
    """Whether model.json records this file (its operating point was chosen with it)."""


def recorded_file(card: dict[str, Any]) -> str | None:
    """The second-stage file ``card`` (model.json) records its operating point was chosen
    with (records older than 0.3.0 name none: the trees), or None."""
    recorded = card.get("second_stage")
    return str(recorded.get("file", TREES)) if isinstance(recorded, dict) else None


def load(
    package: str, card: dict[str, Any], device: str, choice: str | None = None
) -> LoadedScorer | None:
    """The scorer named by ``choice`` (one of ``FILES``), else the one ``card`` records under
    ``second_stage``, else the first of ``FILES`` shipped in ``package``; None when there is
    none (the plugin then uses the network's embolus output alone). A recorded file must have
    the recorded sha256 (RuntimeError otherwise)."""
    if choice is not None and choice not in FILES:
        raise ValueError(f"unknown second stage {choice!r}; expected one of {FILES}")
    recorded = recorded_file(card)
    shipped = [f for f in FILES if resources.files(package).joinpath(f).is_file()]
    file = choice or recorded or next(iter(shipped), None)
    if file is None:
        return None
    if file == recorded:
        raw = packaged_model.read_checked(package, file, card["second_stage"].get("sha256"))
    else:
        raw = resources.files(package).joinpath(file).read_bytes()
        logger.warning(
            "pe: second stage %s is not the one recorded in the model card (its operating "
            "point was not chosen with it)",
            file,
        )
    scorer: CandidateScorer
    if file == PATCH_NETWORK:
        scorer = PatchNetwork.from_onnx(raw, device)
    else:
        scorer = filling_defects.DefectClassifier.from_json(json.loads(raw))
    return LoadedScorer(file, hashlib.sha256(raw).hexdigest(), scorer, file == recorded)
