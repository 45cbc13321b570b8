"""ONNX export of a trained model and the check of the export against torch, shared by the
training scripts (needs torch and onnxruntime; plugins never import it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

ONNX_OPSET = 17
SPATIAL_AXIS_NAMES = ("depth", "height", "width")


def export(
    model: nn.Module,
    path: Path,
    example: torch.Tensor,
    input_name: str,
    output_name: str = "probability",
    *,
    spatial_dynamic: bool = True,
) -> None:
    """Write ``model`` (which already outputs what the plugin reads, e.g. probabilities) to
    ``path``, with the batch axis of ``example`` (N, C, ...) dynamic, and its spatial axes too
    unless ``spatial_dynamic`` is False (a classifier of fixed-size patches)."""
    model.eval()
    axes: dict[int, str] = {0: "batch"}
    if spatial_dynamic:
        spatial = SPATIAL_AXIS_NAMES[-(example.dim() - 2) :]
        axes.update({2 + k: name for k, name in enumerate(spatial)})
    torch.onnx.export(
        model,
        (example,),
        str(path),
        opset_version=ONNX_OPSET,
        input_names=[input_name],
        output_names=[output_name],
        dynamic_axes={input_name: axes, output_name: axes},
        dynamo=False,
    )


def max_difference(
    model: nn.Module, path: Path, x: npt.NDArray[np.float32], input_name: str
) -> float:
    """Largest absolute difference between ``model`` in torch and the exported file in
    onnxruntime on the input ``x``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {input_name: x})
    with torch.no_grad():
        torch_out = model.eval()(torch.from_numpy(x)).numpy()
    return float(np.abs(onnx_out - torch_out).max())
