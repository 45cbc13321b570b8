"""Every training script still runs from its new home (``training/``): a few steps on a few
generated scans, an ONNX model and its card written where ``--out`` says, the shipped weights
untouched. (The figures of the committed models are reproduced by the evaluation scripts; see
docs/algorithms.md. This only proves the scripts run end to end.)"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--workers", "1"]
CASES: dict[str, list[str]] = {
    "lung_nodule_stage_1": [
        "training.lung_nodule.train",
        "--stage",
        "1",
        "--volumes",
        "2",
        "--steps",
        "2",
        "--batch",
        "2",
    ],
    # Stage 2 mines candidates with a stage-1 model: the shipped one, copied to --out.
    "lung_nodule_stage_2": [
        "training.lung_nodule.train",
        "--stage",
        "2",
        "--fp-volumes",
        "3",
        "--fp-steps",
        "2",
    ],
    "ms_lesion": ["training.ms_lesion.train", "--phantoms", "2", "--steps", "2", "--batch", "2"],
    "pe": ["training.pe.train", "--volumes", "2", "--steps", "2", "--batch", "2"],
    "fracture": [
        "training.fracture.train",
        "--images",
        "4",
        "--steps",
        "2",
        "--batch",
        "2",
        "--validation-images",
        "2",
        "--mine-images",
        "0",
    ],
}


def run_script(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` in ``cwd`` (the scripts cache generated data in
    ./training-data), failing the test with the end of its output if it fails."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def shipped_weights() -> dict[str, str]:
    return {
        str(path.relative_to(REPO)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((REPO / "algorithms").glob("*/*.onnx"))
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_training_script_runs_and_writes_a_model_where_asked(case: str, tmp_path: Path) -> None:
    before = shipped_weights()
    out = tmp_path / "model.onnx"
    if case == "lung_nodule_stage_2":
        for name in ("model.onnx", "model.json"):
            shutil.copy(REPO / "algorithms" / "lung_nodule" / name, tmp_path / name)
    module, *args = CASES[case]
    run_script(module, [*args, *SMALL, "--out", str(out)], tmp_path)
    written = tmp_path / ("fp_reduction.onnx" if case == "lung_nodule_stage_2" else "model.onnx")
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.shape[0] == "batch"
    shape = [2 if isinstance(d, str) and d == "batch" else d for d in model_input.shape]
    shape = [32 if isinstance(d, str) else d for d in shape]
    outputs = session.run(None, {model_input.name: np.zeros(shape, np.float32)})
    assert all(np.isfinite(o).all() for o in outputs)
    card = json.loads((tmp_path / "model.json").read_text())
    assert ("fp_reduction" if case == "lung_nodule_stage_2" else "training") in card
    assert shipped_weights() == before, "a training run with --out must not touch the shipped model"


def test_the_pe_second_stage_trains_on_generated_scans_and_writes_its_trees(
    tmp_path: Path,
) -> None:
    package = REPO / "algorithms" / "pe"
    before = {n: (package / n).read_bytes() for n in ("model.json", "defects.json")}
    out = tmp_path / "defects.json"
    run_script(
        "training.pe.train_defects",
        [
            "--scans",
            "4",
            "--workers",
            "1",
            "--trees",
            "20",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "training-data"),
        ],
        tmp_path,
    )
    from algorithms.pe.filling_defects import FEATURES, DefectClassifier

    card = json.loads(out.read_text())
    assert card["training"]["seeds"] == [400000, 400003]
    assert card["training"]["candidate_emboli"] > 0
    classifier = DefectClassifier.from_json(card)
    assert len(classifier.trees) == 20
    p = classifier.probabilities(np.zeros((3, len(FEATURES)), np.float32))
    assert np.all((p > 0) & (p < 1))
    assert list((tmp_path / "training-data").glob("pe_defects_*_400000_4.pkl"))
    assert {n: (package / n).read_bytes() for n in before} == before


@pytest.mark.parametrize(
    ("scales", "within_share", "cache_name"),
    [(1, 0.0, "pe_patches"), (2, 1.0, "pe_patches_s2_w100")],
)
def test_the_pe_candidate_cnn_trains_on_vessel_patches_and_exports_onnx(
    tmp_path: Path, scales: int, within_share: float, cache_name: str
) -> None:
    from algorithms.pe.filling_defects import FEATURES, Candidates
    from algorithms.pe.second_stage import PatchNetwork
    from algorithms.pe.vessel_patches import ACROSS_MM, ALONG_MM, CHANNELS

    package = REPO / "algorithms" / "pe"
    shipped = ("model.json", "defects_cnn.onnx", "defects_cnn.json")
    before = {n: (package / n).read_bytes() for n in shipped}
    out = tmp_path / "cnn.onnx"
    run_script(
        "training.pe.train_defect_cnn",
        [
            "--scans",
            "6",
            "--epochs",
            "1",
            "--workers",
            "1",
            "--check-fraction",
            "0.5",
            "--scales",
            str(scales),
            "--within-share",
            str(within_share),
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "training-data"),
        ],
        tmp_path,
    )
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["seeds"] == [400000, 400005]
    assert card["training"]["clots_within_artery_share"] == within_share
    assert card["training"]["trained_on_scans"] == 3 and card["training"]["candidate_emboli"] > 0
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["training"]["onnx_max_difference"] < 1e-4
    assert len(card["input"]["channels"]) == CHANNELS * scales
    check = card["training"]["check_auc"]  # None when the held-out scans have no embolus
    assert check is None or 0.0 <= check <= 1.0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    patches = np.zeros((5, CHANNELS * scales, len(ACROSS_MM), len(ALONG_MM)), np.float32)
    (p,) = session.run(None, {"patches": patches})
    assert p.shape == (5,) and np.all((p > 0) & (p < 1))
    scorer = PatchNetwork.from_onnx(out.read_bytes(), "cpu")
    assert scorer.scales == scales  # read from the network's input, as the plugin loads it
    labels = np.zeros((20, 20, 20), np.int32)
    labels[8:12, 8:12, 8:12] = 1  # one candidate, scored the way the plugin scores them
    candidates = Candidates((slice(0, 20),) * 3, labels, np.zeros((1, len(FEATURES)), np.float32))
    hu = np.full((20, 20, 20), 200.0, np.float32)
    (q,) = scorer.candidate_probabilities(hu, (1.0, 1.0, 1.0), candidates, 300.0)
    assert 0.0 < q < 1.0
    assert list((tmp_path / "training-data").glob(f"{cache_name}_*_400000_6.pkl"))
    assert {n: (package / n).read_bytes() for n in shipped} == before


def test_the_pe_level_network_trains_on_generated_scans_and_writes_its_card(
    tmp_path: Path,
) -> None:
    package = REPO / "algorithms" / "pe"
    before = {n: (package / n).read_bytes() for n in ("levels.onnx", "levels.json")}
    out = tmp_path / "levels.onnx"
    run_script(
        "training.pe.train_levels",
        ["--volumes", "3", "--steps", "2", "--batch", "2", *SMALL, "--out", str(out)],
        tmp_path,
    )
    card = json.loads((tmp_path / "levels.json").read_text())
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["training"]["steps"] == 2
    assert card["training"]["seeds"] == [500000, 500001]
    assert card["training"]["held_out_seeds"] == [500002, 500002]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (p,) = session.run(None, {"levels": np.zeros((1, 3, 16, 16, 16), np.float32)})
    assert p.shape == (1, 1, 16, 16, 16) and np.all((p >= 0) & (p <= 1))
    assert {n: (package / n).read_bytes() for n in before} == before
