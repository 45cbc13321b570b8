"""Helpers for the manifest and runtime tests: the example vendor models, manifests, studies."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt

from algorithms.contract import SeriesInput, StudyInput, VolumeGeometry

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "third_party"


def example_builder() -> ModuleType:
    """``examples/third_party/make_example_model.py``, imported from its file (it is a script
    shipped for vendors and admins, not part of the radrouter package)."""
    spec = importlib.util.spec_from_file_location(
        "make_example_model", EXAMPLES / "make_example_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def study(
    array: npt.NDArray[np.float32],
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
    header: dict[str, str] | None = None,
    threshold: float | None = None,
) -> StudyInput:
    """An axial study of ``array`` (slice, row, column) with an LPS affine of ``spacing``."""
    dz, dy, dx = spacing
    affine = np.array(
        [[0.0, 0.0, dx, -100.0], [0.0, dy, 0.0, -100.0], [dz, 0.0, 0.0, 0.0], [0, 0, 0, 1.0]]
    )
    shape = (int(array.shape[0]), int(array.shape[1]), int(array.shape[2]))
    series = SeriesInput(
        "2.25.2",
        array.astype(np.float32),
        VolumeGeometry(affine, shape, "2.25.1"),
        header if header is not None else {"Modality": "CT", "BodyPartExamined": "CHEST"},
    )
    return StudyInput("2.25.3", series, threshold=threshold)


def ct_with_cube(
    shape: tuple[int, int, int] = (12, 64, 64),
    lo: tuple[int, int, int] = (4, 20, 24),
    size: tuple[int, int, int] = (4, 10, 12),
    hu: float = 400.0,
) -> npt.NDArray[np.float32]:
    """Air-filled volume with a soft-tissue body and one bright box of voxels."""
    array = np.full(shape, -1000.0, dtype=np.float32)
    array[:, 8:-8, 8:-8] = 40.0
    array[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = hu
    return array


SEGMENTER_MANIFEST = """\
manifest_version: 1
name: {name}
display_name: Test segmenter
version: 1.0.0
manufacturer: radrouter tests
intended_use: tests only
target: {{value: "52988006", scheme_designator: SCT, meaning: Lesion}}
model:
  file: {model}
  sha256: {sha256}
accepts:
  modalities: [CT]
  min_slices: 4
preprocessing:
  mode: volume
  clip: [-1000, 1000]
  normalise: {{method: scale, scale: 0.001}}
outputs:
  - kind: mask
    output: probability
    voxel_threshold: 0.5
    threshold: 0.5
"""


def write_manifest(folder: Path, text: str, file_name: str = "manifest.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    path.write_text(text, encoding="utf-8")
    return path
