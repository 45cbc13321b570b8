"""Accuracy of the CT water-phantom constancy test on generated phantoms with known errors.

    .venv/bin/python -m training.ct_water_qa.evaluate [--cases 200] [--seed 1]

Each case is a water phantom (``testing.phantoms``) with a random CT-number bias, cupping (or
capping), noise, diameter and pixel size, drawn so that about half of them break a
tolerance. Printed: the measurement errors against the generated truth, and how often the
pass/fail of each test and of the whole scan agrees with the truth at the default tolerances
(noise limit 10 HU). There is nothing to train: the algorithm is a measurement.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from algorithms.contract import SeriesInput, StudyInput, Verdict, VolumeGeometry
from algorithms.ct_water_qa.plugin import PARAMETERS, CtWaterPhantomQa
from testing.phantoms import WaterPhantom, water_phantom_hu

NOISE_LIMIT_HU = 10.0


def random_phantom(rng: np.random.Generator, seed: int) -> WaterPhantom:
    return WaterPhantom(
        bias_hu=float(rng.uniform(-8.0, 8.0)),
        cupping_hu=float(rng.uniform(-10.0, 10.0)),
        noise_hu=float(rng.uniform(2.0, 16.0)),
        diameter_mm=float(rng.choice([160.0, 200.0, 250.0, 320.0])),
        pixel_mm=float(rng.choice([0.5, 0.7, 0.9])),
        seed=seed,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    plugin = CtWaterPhantomQa()
    plugin.load("cpu")
    limits = {**PARAMETERS, "noise_max_hu": NOISE_LIMIT_HU}
    water_errors, noise_errors, uniformity_errors = [], [], []
    agree = {"Water CT number": 0, "Uniformity": 0, "Noise": 0, "scan": 0}
    failing_scans = 0
    misjudged_margins: list[float] = []
    """How far the truth of each misjudged test was from its tolerance."""
    for case in range(args.cases):
        phantom = random_phantom(rng, args.seed * 100_000 + case)
        if phantom.diameter_mm / phantom.pixel_mm > 500:
            phantom = WaterPhantom(**{**phantom.__dict__, "pixel_mm": 0.9})
        volume = water_phantom_hu(phantom)
        affine = np.diag([phantom.slice_mm, phantom.pixel_mm, phantom.pixel_mm, 1.0])
        series = SeriesInput(
            "1.2.3", volume, VolumeGeometry(affine, volume.shape, "1.2.3.4"), {"Modality": "CT"}
        )
        result = plugin.run(StudyInput("1.2", series, parameters=limits))
        values = {m.name.meaning: m.value for m in result.measurements}
        water = values["Mean CT number of water"]
        noise = values["Noise (standard deviation of CT number)"]
        uniformity = values["Uniformity (peripheral minus central CT number)"]
        # the truth at the peripheral ROIs: centred 10 mm + 10 mm inside the water
        offset_mm = phantom.water_radius_mm - 10.0 - min(10.0, 0.15 * phantom.water_radius_mm)
        roi_mm = min(10.0, 0.15 * phantom.water_radius_mm)
        true_uniformity = phantom.expected_peripheral_offset_hu(offset_mm, roi_mm)
        water_errors.append(water - phantom.bias_hu)
        noise_errors.append(noise / phantom.noise_hu - 1.0)
        uniformity_errors.append(uniformity - true_uniformity)
        truth = {
            "Water CT number": abs(phantom.bias_hu) > limits["water_tolerance_hu"],
            "Uniformity": abs(true_uniformity) > limits["uniformity_tolerance_hu"],
            "Noise": phantom.noise_hu > NOISE_LIMIT_HU,
        }
        margins = {
            "Water CT number": abs(abs(phantom.bias_hu) - limits["water_tolerance_hu"]),
            "Uniformity": abs(abs(true_uniformity) - limits["uniformity_tolerance_hu"]),
            "Noise": abs(phantom.noise_hu - NOISE_LIMIT_HU),
        }
        found = {f.tracking_id for f in result.findings}
        for name, fails in truth.items():
            agree[name] += fails == (name in found)
            if fails != (name in found):
                misjudged_margins.append(margins[name])
        failing_scans += any(truth.values())
        agree["scan"] += any(truth.values()) == (result.verdict is Verdict.PRESENT)

    def spread(errors: list[float], scale: float = 1.0, unit: str = "HU") -> str:
        values = [e * scale for e in errors]
        mean = statistics.fmean(values)
        worst = max(values, key=abs)
        return f"mean {mean:+.2f} {unit}, sd {statistics.stdev(values):.2f}, worst {worst:+.2f}"

    print(f"{args.cases} generated phantoms (seed {args.seed}), {failing_scans} out of tolerance")
    print(f"water CT number error: {spread(water_errors)}")
    print(f"noise error:           {spread(noise_errors, 100.0, '%')}")
    print(f"uniformity error:      {spread(uniformity_errors)}")
    for name, count in agree.items():
        print(f"pass/fail agrees with truth, {name}: {count}/{args.cases}")
    if misjudged_margins:
        print(
            f"every misjudged test was within {max(misjudged_margins):.2f} HU of its tolerance "
            "(noise: of the limit)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
