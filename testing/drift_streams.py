"""Streams of generated chest CTs for the drift tests: a scanner whose studies keep their
kernel and noise (stable) or change them (a sharper kernel, more noise), and a test algorithm
whose probability rises with image noise, as a detector's false positives do."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from algorithms.codes import LUNG_NODULE
from algorithms.contract import AlgorithmInfo, AlgorithmResult, StudyInput, Verdict
from testing.dicom_tools import make_ct_slices

MIN_SLICES = 3
"""The test algorithm states "not assessed" below this many slices."""


def noise_probability(volume: np.typing.NDArray[np.float32]) -> float:
    """The probability the test algorithm gives: logistic in the noise (HU standard deviation)
    of the soft tissue, 0.5 at 20 HU."""
    tissue = volume[np.abs(volume - 40.0) < 200.0]
    noise = float(tissue.std()) if tissue.size else 0.0
    return 1.0 / (1.0 + math.exp(-(noise - 20.0) / 4.0))


class NoiseSensitive:
    """A CT "detector" whose probability is :func:`noise_probability` (present at 0.5)."""

    info: ClassVar[AlgorithmInfo] = AlgorithmInfo(
        name="noise_sensitive",
        display_name="test noise-sensitive detector",
        version="1.0.0",
        manufacturer="radrouter tests",
        device_uid="2.25.987654321",
        modalities=frozenset({"CT"}),
        intended_use="tests only",
        max_runtime_s=30.0,
        target=LUNG_NODULE,
    )

    def load(self, device: str) -> None:
        pass

    def run(self, study: StudyInput) -> AlgorithmResult:
        volume = study.series.array
        if volume.shape[0] < MIN_SLICES:
            return AlgorithmResult(
                Verdict.NOT_ASSESSED, reason=f"too few slices: {volume.shape[0]}"
            )
        probability = round(noise_probability(volume), 4)
        verdict = Verdict.PRESENT if probability >= 0.5 else Verdict.ABSENT
        return AlgorithmResult(verdict, probability=probability, reason="noise detector")


@dataclass(frozen=True)
class Scanner:
    """How one CT acquires and reconstructs: its model, kernel, kVp, and the noise of its
    images (HU standard deviation: mean and spread from study to study)."""

    model: str = "Synthetic CT 64"
    kernel: str = "B30f"
    kvp: str = "120"
    noise_hu: float = 14.0
    noise_spread_hu: float = 5.0


STABLE = Scanner()
SHARP = Scanner(kernel="B70f", noise_hu=30.0)
"""The same scanner after a protocol change: a sharp kernel, noisier images."""


def write_study(
    folder: Path, scanner: Scanner, rng: np.random.Generator, slices: int = 4, size: int = 32
) -> list[Path]:
    """One generated chest CT from ``scanner``, written as Part-10 files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    noise = max(0.0, rng.normal(scanner.noise_hu, scanner.noise_spread_hu))
    paths = []
    for ds in make_ct_slices(slices, rows=size, cols=size):
        ds.ManufacturerModelName = scanner.model
        ds.ConvolutionKernel = scanner.kernel
        ds.KVP = scanner.kvp
        pixels = np.frombuffer(ds.PixelData, dtype=np.int16).astype(np.float64)
        pixels = pixels + rng.normal(0.0, noise, pixels.shape)
        ds.PixelData = np.clip(np.round(pixels), -32768, 32767).astype(np.int16).tobytes()
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
