"""The training scripts' ONNX export (shared ``training.onnx_export``): every network
exports, with dynamic axes where the plugin needs them, and onnxruntime agrees with torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.fracture import train as fracture_train
from training.fracture.network import FractureNet
from training.lung_nodule import train as nodule_train
from training.lung_nodule import train_fp as candidate_train
from training.lung_nodule.network import CandidateNet, NoduleUNet
from training.ms_lesion import train as flair_train
from training.ms_lesion.network import FlairUNet
from training.pe import train as pe_train
from training.pe.network import EmbolusUNet

Exporter = Callable[..., None]
Checker = Callable[..., float]

CASES: list[tuple[str, Callable[[], torch.nn.Module], Exporter, Checker]] = [
    ("lung_nodule", NoduleUNet, nodule_train.export_onnx, nodule_train.check_onnx),
    ("lung_nodule_fp", CandidateNet, candidate_train.export_onnx, candidate_train.check_onnx),
    ("ms_lesion", FlairUNet, flair_train.export_onnx, flair_train.check_onnx),
    ("pe", EmbolusUNet, pe_train.export_onnx, pe_train.check_onnx),
    ("fracture", FractureNet, fracture_train.export_onnx, fracture_train.check_onnx),
]


@pytest.mark.parametrize(("name", "make", "export", "check"), CASES, ids=[c[0] for c in CASES])
def test_a_fresh_network_exports_and_onnxruntime_agrees_with_torch(
    name: str,
    make: Callable[[], torch.nn.Module],
    export: Exporter,
    check: Checker,
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    net = make()
    path = tmp_path / f"{name}.onnx"
    export(net, path)
    # The check runs another input shape than the export's example: the axes are dynamic.
    assert check(net, path) < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.shape[0] == "batch"
    probabilities = session.run(
        None, {model_input.name: np.zeros(_small_shape(model_input.shape), np.float32)}
    )[0]
    assert np.all((probabilities >= 0.0) & (probabilities <= 1.0))


def _small_shape(shape: list[int | str]) -> tuple[int, ...]:
    """A batch of one at 32 voxels per dynamic spatial axis."""
    return tuple(
        1 if k == 0 else (32 if isinstance(n, str) else int(n)) for k, n in enumerate(shape)
    )
