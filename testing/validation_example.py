"""The example validation in docs/operations.md: 40 generated water phantoms (random bias
within ±8 HU and noise 3-12 HU, seed 7) and their truth (out of tolerance: |bias| > 4 HU).

    python -m testing.validation_example OUT
    radrouter validate ct_water_qa OUT/cases --truth OUT/truth.csv --out OUT/report
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom

from testing.phantoms import WaterPhantom, write_water_phantom_series

CASES = 40
TOLERANCE_HU = 4.0


def write_example(out: Path, cases: int = CASES, seed: int = 7) -> Path:
    """The cases under ``out/cases`` and ``out/truth.csv``; returns the truth file."""
    rng = np.random.default_rng(seed)
    rows = ["study_uid,label"]
    for number in range(cases):
        bias = float(rng.uniform(-8, 8))
        phantom = WaterPhantom(
            bias_hu=bias, noise_hu=float(rng.uniform(3, 12)), size=256, pixel_mm=1.0, seed=number
        )
        paths = write_water_phantom_series(out / "cases" / str(number), phantom)
        uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
        rows.append(f"{uid},{'present' if abs(bias) > TOLERANCE_HU else 'absent'}")
    truth = out / "truth.csv"
    truth.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return truth


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m testing.validation_example OUT")
    print(write_example(Path(sys.argv[1])))
