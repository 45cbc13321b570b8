"""A test plugin whose finding spans several slices, for the worklist page's slice stepping."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy import ndimage

from algorithms import codes
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Finding,
    ImageRegion,
    Measurement,
    Qualifier,
    StudyInput,
    Verdict,
)

SPAN = (2, 5)
"""First and last slice (indices of the volume) of the finding's mask."""
KEY_SLICE = 4
"""The slice its SR region is drawn on."""


class RightLungOutliner:
    """States "present" with one finding: the patient's right lung of the test phantom (the
    enclosed region below -500 HU with the lower mean column) on slices 2-5, its mask shrunk
    by one pixel per slice away from slice 4, so every slice's outline differs; the region is
    its bounding box on slice 4, the long axis that box's height."""

    info: ClassVar[AlgorithmInfo] = AlgorithmInfo(
        name="right_lung",
        display_name="test right_lung",
        version="9.9.9",
        manufacturer="radrouter tests",
        device_uid="2.25.1234567891",
        modalities=frozenset({"CT"}),
        intended_use="tests only",
        max_runtime_s=30.0,
        target=codes.LUNG_NODULE,
    )

    def load(self, device: str) -> None:
        pass

    def run(self, study: StudyInput) -> AlgorithmResult:
        volume = study.series.array
        if volume.shape[0] <= SPAN[1]:
            return AlgorithmResult(Verdict.NOT_ASSESSED, reason="too few slices (test plugin)")
        labels, count = ndimage.label(volume[KEY_SLICE] < -500.0)
        border = set(
            np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        )
        inner = [n for n in range(1, count + 1) if n not in border]
        if not inner:
            return AlgorithmResult(Verdict.ABSENT, reason="no enclosed dark region (test plugin)")
        right = min(inner, key=lambda n: float(np.nonzero(labels == n)[1].mean()))
        lung = labels == right
        mask = np.zeros(volume.shape, dtype=bool)
        for k in range(SPAN[0], SPAN[1] + 1):
            shrink = abs(k - KEY_SLICE)
            mask[k] = ndimage.binary_erosion(lung, iterations=shrink) if shrink else lung
        rows, cols = np.nonzero(lung)
        c0, c1 = float(cols.min()), float(cols.max() + 1)
        r0, r1 = float(rows.min()), float(rows.max() + 1)
        row_mm = study.series.geometry.spacing_mm[1]
        finding = Finding(
            finding_type=codes.LUNG_NODULE,
            probability=0.9,
            centre_voxel=(float(KEY_SLICE), float(rows.mean()), float(cols.mean())),
            region=ImageRegion(KEY_SLICE, ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))),
            measurements=(
                Measurement(codes.LONG_AXIS, round((r1 - r0) * row_mm, 1), codes.MILLIMETRE),
            ),
            finding_site=codes.LUNG,
            tracking_id="Lung 1",
            mask=mask,
            qualifiers=(Qualifier(codes.LATERALITY, codes.RIGHT),),
        )
        return AlgorithmResult(Verdict.PRESENT, findings=(finding,), reason="right lung")
