"""Held-out evaluation of the lung nodule plugin on synthetic chest CTs (CLI)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from algorithms.contract import (
    AlgorithmResult,
    SeriesInput,
    StudyInput,
    Verdict,
    VolumeGeometry,
)
from algorithms.lung_nodule.plugin import LungNoduleDetector
from training.lung_nodule.synth import NoduleTruth, SyntheticChestCT, generate_chest_ct

EVAL_SEED_BASE = 900_000
"""Held-out scans use seeds EVAL_SEED_BASE + i (training uses 100000 + i, i < 1000)."""
MATCH_MIN_MM = 5.0
SIZE_BANDS = ((3.0, 6.0), (6.0, 10.0), (10.0, 30.0))
THRESHOLDS = (0.5, 0.7, 0.9)
EVAL_PIXEL_MM = (0.6, 1.3)
"""Pixel spacing range of the held-out scans (the training range)."""


def make_study(ct: SyntheticChestCT, uid_suffix: int = 1) -> StudyInput:
    """Wrap a synthetic CT as the router would: float32 HU, axial LPS affine, CT header."""
    dz, dy, dx = ct.spacing_mm
    nz, ny, nx = ct.hu.shape
    affine = np.zeros((4, 4))
    affine[0, 2] = dx  # column index -> patient left (+x)
    affine[1, 1] = dy  # row index -> posterior (+y)
    affine[2, 0] = dz  # slice index -> head (+z)
    affine[:3, 3] = (-(nx - 1) * dx / 2, -(ny - 1) * dy / 2, -100.0)
    affine[3, 3] = 1.0
    geometry = VolumeGeometry(affine, (nz, ny, nx), f"2.25.{uid_suffix}1")
    series = SeriesInput(
        series_instance_uid=f"2.25.{uid_suffix}2",
        array=ct.hu.astype(np.float32),
        geometry=geometry,
        header={"Modality": "CT", "BodyPartExamined": "CHEST"},
    )
    return StudyInput(study_instance_uid=f"2.25.{uid_suffix}3", series=series)


def match_radius_mm(truth: NoduleTruth) -> float:
    """A detection matches a nodule when its centre is within max(5 mm, radius) of the truth."""
    return max(MATCH_MIN_MM, truth.diameter_mm / 2)


@dataclass
class ScanOutcome:
    truths: tuple[NoduleTruth, ...]
    matched_prob: list[float | None]
    """Per truth: probability of the detection that matched it, None if missed."""
    matched_long_axis: list[float | None]
    fp_probs: list[float]
    verdict: Verdict
    seconds: float


def score(ct: SyntheticChestCT, result: AlgorithmResult, seconds: float) -> ScanOutcome:
    spacing = np.array(ct.spacing_mm)
    truths = ct.nodules
    taken: list[float | None] = [None] * len(truths)
    long_axis: list[float | None] = [None] * len(truths)
    fps: list[float] = []
    for f in sorted(result.findings, key=lambda f: -f.probability):
        best, best_d = -1, np.inf
        for n, t in enumerate(truths):
            d = float(np.linalg.norm((np.array(f.centre_voxel) - t.centre_voxel) * spacing))
            if taken[n] is None and d <= match_radius_mm(t) and d < best_d:
                best, best_d = n, d
        if best < 0:
            fps.append(f.probability)
        else:
            taken[best] = f.probability
            long_axis[best] = next(m.value for m in f.measurements if m.name.meaning == "Long axis")
    return ScanOutcome(truths, taken, long_axis, fps, result.verdict, seconds)


def _line(label: str, hits: int, total: int) -> str:
    pct = f"{100.0 * hits / total:5.1f} %" if total else "    n/a"
    return f"  {label:<22} {pct}  ({hits}/{total})"


def report(outcomes: list[ScanOutcome], operating: float | None = None) -> str:
    """The summary at THRESHOLDS and at the plugin's ``operating`` threshold."""
    lines: list[str] = []
    n_scans = len(outcomes)
    pairs = [(t, p) for o in outcomes for t, p in zip(o.truths, o.matched_prob, strict=True)]
    fps = [p for o in outcomes for p in o.fp_probs]
    lines.append(
        f"scans: {n_scans} ({sum(1 for o in outcomes if not o.truths)} without nodules), "
        f"nodules: {len(pairs)}"
    )
    lines.append(
        f"match criterion: detection centre within max({MATCH_MIN_MM:.0f} mm, nodule radius) "
        "of the true centre; one detection per nodule, the rest are false positives"
    )
    for thr in sorted({*THRESHOLDS, *([operating] if operating is not None else [])}):
        lines.append("")
        hit = [p is not None and p >= thr for _, p in pairs]
        n_fp = sum(1 for p in fps if p >= thr)
        mark = " (the plugin's operating threshold)" if thr == operating else ""
        lines.append(f"at probability threshold {thr:g}{mark}:")
        lines.append(_line("sensitivity, all", sum(hit), len(hit)))
        groups: dict[str, list[bool]] = defaultdict(list)
        for (t, _), h in zip(pairs, hit, strict=True):
            for lo, hi in SIZE_BANDS:
                if lo <= t.diameter_mm < hi or (hi == SIZE_BANDS[-1][1] and t.diameter_mm == hi):
                    groups[f"size {lo:.0f}-{hi:.0f} mm"].append(h)
            groups[f"kind {t.kind}"].append(h)
            groups[f"attachment {t.attachment}"].append(h)
        for key in sorted(groups, key=_group_order):
            lines.append(_line(key, sum(groups[key]), len(groups[key])))
        lines.append(f"  false positives/scan   {n_fp / max(n_scans, 1):.2f}  ({n_fp} in total)")
        empty = [o for o in outcomes if not o.truths]
        if empty:
            clean = sum(1 for o in empty if not any(p >= thr for p in o.fp_probs))
            lines.append(_line("nodule-free scans clean", clean, len(empty)))
    errors = [
        abs(la - t.diameter_mm)
        for o in outcomes
        for t, la in zip(o.truths, o.matched_long_axis, strict=True)
        if la is not None
    ]
    if errors:
        lines.append("")
        lines.append(
            f"long axis vs true diameter (matched): mean abs error {np.mean(errors):.1f} mm, "
            f"median {np.median(errors):.1f} mm"
        )
    secs = [o.seconds for o in outcomes]
    lines.append(f"plugin run time per scan: mean {np.mean(secs):.2f} s, max {np.max(secs):.2f} s")
    return "\n".join(lines)


def _group_order(key: str) -> tuple[int, str]:
    prefixes = ("size 3", "size 6", "size 10", "kind", "attachment")
    return next(i for i, p in enumerate(prefixes) if key.startswith(p)), key


def eval_scan(seed: int) -> SyntheticChestCT:
    """A held-out scan: realistic pixel and slice spacing, 0-5 random nodules."""
    rng = np.random.default_rng([seed, 77])
    pixel = float(rng.uniform(EVAL_PIXEL_MM[0], EVAL_PIXEL_MM[1]))
    spacing = (float(rng.choice([0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0])), pixel, pixel)
    size = int(rng.choice([320, 384]))
    n_slices = round(float(rng.uniform(150.0, 250.0)) / spacing[0])
    return generate_chest_ct(
        seed,
        shape=(n_slices, size, size),
        spacing_mm=spacing,
        nodules=int(rng.integers(0, 6)),
    )


def evaluate(
    seeds: Iterable[int], device: str = "cpu", fp_reduction: bool = True
) -> list[ScanOutcome]:
    return evaluate_with(load_detector(device, fp_reduction), seeds)


def load_detector(device: str = "cpu", fp_reduction: bool = True) -> LungNoduleDetector:
    detector = LungNoduleDetector(use_fp_reduction=fp_reduction)
    detector.load(device)
    return detector


def evaluate_with(detector: LungNoduleDetector, seeds: Iterable[int]) -> list[ScanOutcome]:
    """Runs the plugin at the lowest reported threshold (as a site would set it), so that the
    report can apply every higher one, the operating threshold included."""
    outcomes = []
    for n, seed in enumerate(seeds):
        ct = eval_scan(seed)
        study = dataclasses.replace(make_study(ct, seed), threshold=min(THRESHOLDS))
        start = time.monotonic()
        result = detector.run(study)
        seconds = time.monotonic() - start
        outcome = score(ct, result, seconds)
        outcomes.append(outcome)
        missed = sum(1 for p in outcome.matched_prob if p is None)
        print(
            f"scan {n + 1:3d} seed {seed} {ct.hu.shape} spacing "
            f"{tuple(round(s, 2) for s in ct.spacing_mm)}: {len(ct.nodules)} nodules, "
            f"{missed} missed, {len(outcome.fp_probs)} FP, {seconds:.1f} s",
            flush=True,
        )
    return outcomes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=40)
    parser.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--stage1-only",
        action="store_true",
        help="skip the false-positive reduction (stage 2); probability = U-Net peak",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.monotonic()
    seeds = range(args.seed_base, args.seed_base + args.scans)
    detector = load_detector(args.device, fp_reduction=not args.stage1_only)
    outcomes = evaluate_with(detector, seeds)
    print()
    print(report(outcomes, detector.threshold))
    print(f"total evaluation time {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
