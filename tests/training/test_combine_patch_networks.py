"""``training.pe.combine_patch_networks``: one ONNX file whose output is the mean of the
second-stage CNNs it combines, each fed the channels it was trained on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from algorithms.pe.second_stage import PatchNetwork
from algorithms.pe.vessel_patches import ACROSS_MM, ALONG_MM, CHANNELS
from training.onnx_export import export
from training.pe import combine_patch_networks
from training.pe.train_defect_cnn import INPUT_NAME, AveragedProbability, DefectNet

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CNN = REPO / "algorithms" / "pe" / "defects_cnn.onnx"


def untrained_cnn(path: Path, scales: int, seed: int, bias: float = 0.0) -> Path:
    """An untrained CNN written like a trained one; ``bias`` moves its output logit (untrained
    networks all say about 0.5)."""
    torch.manual_seed(seed)
    net = DefectNet(scales)
    last = net.head[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.bias.fill_(bias)
    model = AveragedProbability(net).eval()
    example = torch.zeros(2, CHANNELS * scales, len(ACROSS_MM), len(ALONG_MM))
    export(model, path, example, INPUT_NAME, spatial_dynamic=False)
    path.with_suffix(".json").write_text(json.dumps({"what": f"untrained, seed {seed}"}))
    return path


def probabilities(model: bytes | str, patches: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (p,) = session.run(None, {INPUT_NAME: patches})
    return np.asarray(p)


def test_the_combined_network_is_the_mean_of_its_members_each_on_its_own_channels(
    tmp_path: Path,
) -> None:
    package = SHIPPED_CNN.parent
    shipped = ("model.json", "defects_cnn.onnx", "defects_cnn.json")
    before = {n: (package / n).read_bytes() for n in shipped}
    narrow = untrained_cnn(tmp_path / "narrow.onnx", scales=1, seed=4, bias=-1.0)
    wide = untrained_cnn(tmp_path / "wide.onnx", scales=2, seed=3, bias=1.0)
    out = tmp_path / "mean.onnx"
    combine_patch_networks.main([str(narrow), str(wide), "--out", str(out)])

    patches = (
        np.random.default_rng(0)
        .normal(size=(7, 2 * CHANNELS, len(ACROSS_MM), len(ALONG_MM)))
        .astype(np.float32)
    )
    narrow_p = probabilities(str(narrow), patches[:, :CHANNELS])
    wide_p = probabilities(str(wide), patches)
    mean_p = probabilities(str(out), patches)
    assert np.abs(narrow_p - wide_p).max() > 0.05  # two different networks
    np.testing.assert_allclose(mean_p, (narrow_p + wide_p) / 2, atol=1e-6)

    assert PatchNetwork.from_onnx(out.read_bytes(), "cpu").scales == 2
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["input"] == {"name": INPUT_NAME, "channels": 2 * CHANNELS, "views": 2}
    assert [m["sha256"] for m in card["members"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (narrow, wide)
    ]
    assert card["members"][1]["card"] == {"what": "untrained, seed 3"}
    assert {n: (package / n).read_bytes() for n in shipped} == before  # the plugin's untouched


def test_combining_needs_two_networks_of_one_opset(tmp_path: Path) -> None:
    one = onnx.load(str(untrained_cnn(tmp_path / "a.onnx", scales=1, seed=1)))
    with pytest.raises(ValueError, match="at least two"):
        combine_patch_networks.combined([one])
    other = onnx.load(str(untrained_cnn(tmp_path / "b.onnx", scales=1, seed=2)))
    other.opset_import[0].version += 1
    with pytest.raises(ValueError, match="different ONNX opsets"):
        combine_patch_networks.combined([one, other])
