"""Test-only plugins: failures, a fast negative, and a finding to render (never shipped)."""

from __future__ import annotations

import threading
from typing import ClassVar

import numpy as np
from scipy import ndimage

from algorithms.codes import LUNG_NODULE
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Finding,
    ImageRegion,
    StudyInput,
    Verdict,
)


def _info(name: str, max_runtime_s: float = 30.0) -> AlgorithmInfo:
    return AlgorithmInfo(
        name=name,
        display_name=f"test {name}",
        version="9.9.9",
        manufacturer="radrouter tests",
        device_uid="2.25.1234567890",
        modalities=frozenset({"CT"}),
        intended_use="tests only",
        max_runtime_s=max_runtime_s,
        target=LUNG_NODULE,
    )


class CrashingAlgorithm:
    """Raises on every run, like a model with a bug."""

    info: ClassVar[AlgorithmInfo] = _info("crashing")

    def load(self, device: str) -> None:
        pass

    def run(self, study: StudyInput) -> AlgorithmResult:
        raise RuntimeError("simulated model crash")


class HangingAlgorithm:
    """Never returns within its time limit."""

    info: ClassVar[AlgorithmInfo] = _info("hanging", max_runtime_s=1.0)
    release = threading.Event()

    def load(self, device: str) -> None:
        pass

    def run(self, study: StudyInput) -> AlgorithmResult:
        self.release.wait(30)
        return AlgorithmResult(Verdict.ABSENT, reason="late")


class AlwaysNegative:
    """States "absent" for any CT: a fast stand-in where the model is not what is tested."""

    info: ClassVar[AlgorithmInfo] = _info("always_negative")
    runs = 0

    def load(self, device: str) -> None:
        pass

    def run(self, study: StudyInput) -> AlgorithmResult:
        type(self).runs += 1
        return AlgorithmResult(Verdict.ABSENT, reason="no finding (test plugin)")


class DarkestRegionOutliner:
    """States "present" with one finding: the largest enclosed region below -500 HU (a lung in
    the test phantom) on the middle slice, outlined by its bounding box, with its mask."""

    info: ClassVar[AlgorithmInfo] = _info("darkest_region")

    def load(self, device: str) -> None:
        pass

    def run(self, study: StudyInput) -> AlgorithmResult:
        volume = study.series.array
        k = volume.shape[0] // 2
        labels, count = ndimage.label(volume[k] < -500.0)
        border = set(
            np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        )
        sizes = {n: int((labels == n).sum()) for n in range(1, count + 1) if n not in border}
        if not sizes:
            return AlgorithmResult(Verdict.ABSENT, reason="no enclosed dark region (test plugin)")
        largest = max(sizes, key=lambda n: (sizes[n], -n))
        rows, cols = np.nonzero(labels == largest)
        c0, c1 = float(cols.min()), float(cols.max() + 1)
        r0, r1 = float(rows.min()), float(rows.max() + 1)
        mask = np.zeros(volume.shape, dtype=bool)
        mask[k] = labels == largest
        finding = Finding(
            finding_type=LUNG_NODULE,
            probability=0.9,
            centre_voxel=(float(k), float(rows.mean()), float(cols.mean())),
            region=ImageRegion(k, ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))),
            tracking_id="Region 1",
            mask=mask,
        )
        return AlgorithmResult(Verdict.PRESENT, findings=(finding,), reason="dark region")
