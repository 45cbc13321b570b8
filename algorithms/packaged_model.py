"""Loading the ONNX weights a plugin ships in its package: sha256 check against the model
card, then an onnxruntime session on the requested device."""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources
from typing import Any

logger = logging.getLogger(__name__)


def read_card(package: str, card_file: str = "model.json") -> dict[str, Any]:
    """The model card (JSON) shipped in ``package``."""
    card: dict[str, Any] = json.loads(resources.files(package).joinpath(card_file).read_text())
    return card


def read_checked(package: str, model_file: str, expected_sha256: object) -> bytes:
    """The bytes of ``model_file`` in ``package``; RuntimeError unless their sha256 is the one
    the model card names (weights that are not the ones evaluated are never run)."""
    model = resources.files(package).joinpath(model_file).read_bytes()
    digest = hashlib.sha256(model).hexdigest()
    if digest != expected_sha256:
        raise RuntimeError(
            f"{package}: {model_file} sha256 {digest} does not match its model card "
            f"({expected_sha256})"
        )
    return model


def onnx_session(model: bytes, device: str) -> Any:
    """An onnxruntime session with full graph optimisation: the CUDA provider first when
    ``device`` is "cuda" and onnxruntime has it (a warning and CPU otherwise)."""
    import onnxruntime as ort

    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            logger.warning("CUDA requested but onnxruntime has no CUDA provider; using CPU")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=providers)
