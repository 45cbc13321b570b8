"""Held-out evaluation of the fracture plugin on synthetic radiographs (CLI)."""

from __future__ import annotations

import argparse
import logging
import re
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
from algorithms.fracture import inference, postprocess, preprocess
from algorithms.fracture.plugin import FractureDetector
from algorithms.fracture.postprocess import iou
from training.fracture.synth import FractureTruth, SyntheticRadiograph, generate_radiograph

EVAL_SEED_BASE = 9_000_000
"""Held-out images use seeds EVAL_SEED_BASE + i (training 1_000_000 + i, validation
2_000_000 + i, i < 1_000_000)."""
HIT_IOU = 0.3
"""A reported box localises a fracture when their intersection over union reaches this."""
THRESHOLDS = (0.3, 0.5, 0.7)
"""Other operating points reported beside the model card's."""

Extent = tuple[float, float, float, float]


def make_study(radiograph: SyntheticRadiograph, uid_suffix: int = 1) -> StudyInput:
    """Wrap a synthetic radiograph as the router would: (1, rows, cols) modality values, the
    projection affine of ``router.run.series_loader`` and the header a CR modality sends."""
    rows, cols = radiograph.pixels.shape
    spacing = radiograph.pixel_spacing_mm
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, 1.0)
    affine[:3, 1] = (0.0, spacing, 0.0)
    affine[:3, 2] = (spacing, 0.0, 0.0)
    geometry = VolumeGeometry(affine, (1, rows, cols), "")
    series = SeriesInput(
        series_instance_uid=f"2.25.{uid_suffix}2",
        array=radiograph.pixels.astype(np.float32)[None],
        geometry=geometry,
        header={
            "Modality": "CR",
            "BodyPartExamined": radiograph.body_part,
            "PhotometricInterpretation": radiograph.photometric_interpretation,
        },
    )
    return StudyInput(study_instance_uid=f"2.25.{uid_suffix}3", series=series)


def roc_auc(positive: list[float], negative: list[float]) -> float:
    """Area under the ROC curve (probability a positive outranks a negative; ties count 1/2)."""
    if not positive or not negative:
        return float("nan")
    pos = np.asarray(positive)[:, None]
    neg = np.asarray(negative)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def box_of(points: tuple[tuple[float, float], ...]) -> Extent:
    """(row_min, col_min, row_max, col_max) of a (column, row) polyline."""
    cols = [p[0] for p in points]
    rows = [p[1] for p in points]
    return (min(rows), min(cols), max(rows), max(cols))


@dataclass
class ImageOutcome:
    truths: tuple[FractureTruth, ...]
    limb: str
    probability: float
    boxes: dict[float, list[Extent]]
    """The boxes the plugin reports at each threshold evaluated."""
    verdict: Verdict
    """The plugin's verdict at the model card's operating point."""
    seconds: float
    """The plugin's run time."""
    reason: str = ""
    """The plugin's reason when it did not assess the image."""


def boxes_at(
    detector: FractureDetector, radiograph: SyntheticRadiograph, thresholds: Iterable[float]
) -> dict[float, list[Extent]]:
    """The boxes the plugin would report at each threshold (one more network run)."""
    canvas, letterbox, _ = preprocess.prepare(
        radiograph.pixels, radiograph.photometric_interpretation
    )
    heatmap = inference.predict(detector.session, canvas)
    return {t: [b.extent for b in postprocess.decode(heatmap, letterbox, t)] for t in thresholds}


def score(
    radiograph: SyntheticRadiograph,
    result: AlgorithmResult,
    seconds: float,
    boxes: dict[float, list[Extent]],
) -> ImageOutcome:
    return ImageOutcome(
        truths=radiograph.fractures,
        limb=radiograph.limb,
        probability=float(result.probability or 0.0),
        boxes=boxes,
        verdict=result.verdict,
        seconds=seconds,
        reason=result.reason if result.verdict is Verdict.NOT_ASSESSED else "",
    )


def _pct(hits: int, total: int) -> str:
    return f"{100.0 * hits / total:5.1f} % ({hits}/{total})" if total else "  n/a"


@dataclass(frozen=True)
class Localisation:
    box_hits: int
    """Fractures with a reported box of IoU >= HIT_IOU."""
    centre_hits: int
    """Fractures whose centre lies inside a reported box."""
    fractures: int
    stray_boxes: int
    """Reported boxes on fracture images that touch no fracture box."""
    mean_iou: float
    """Mean IoU of the box hits."""


def localisation(outcomes: list[ImageOutcome], threshold: float) -> Localisation:
    box_hits = centre_hits = total = stray = 0
    ious: list[float] = []
    for o in outcomes:
        called = o.boxes[threshold]
        for truth in o.truths:
            total += 1
            overlaps = [iou(b, truth.box) for b in called]
            if overlaps and max(overlaps) >= HIT_IOU:
                box_hits += 1
                ious.append(max(overlaps))
            r, c = truth.centre
            if any(b[0] <= r <= b[2] and b[1] <= c <= b[3] for b in called):
                centre_hits += 1
        stray += sum(1 for b in called if not any(iou(b, t.box) > 0.0 for t in o.truths))
    return Localisation(box_hits, centre_hits, total, stray, float(np.mean(ious)) if ious else 0.0)


def report(outcomes: list[ImageOutcome], operating_point: float) -> str:
    # Images the plugin refuses (e.g. a matrix under 256 pixels) get no probability: they are
    # counted here, not scored as 0, which would call every refused fracture a miss.
    refused = [o for o in outcomes if o.verdict is Verdict.NOT_ASSESSED]
    reasons: dict[str, int] = defaultdict(int)
    for o in refused:
        reasons[re.sub(r"\d+", "N", o.reason)] += 1  # group matrix sizes etc.
    assessed = [o for o in outcomes if o.verdict is not Verdict.NOT_ASSESSED]
    positives = [o for o in assessed if o.truths]
    negatives = [o for o in assessed if not o.truths]
    auc = roc_auc([o.probability for o in positives], [o.probability for o in negatives])
    lines = [
        f"not assessed by the plugin: {len(refused)} "
        f"({sum(1 for o in refused if o.truths)} with fracture), left out of every figure below",
        *(f"  {count} x {reason}" for reason, count in sorted(reasons.items())),
        f"images assessed: {len(assessed)} ({len(positives)} with fracture, "
        f"{len(negatives)} without), fractures: {sum(len(o.truths) for o in positives)}",
        f"study-level AUC (fracture probability): {auc:.3f}",
        f"box hit: a reported box with IoU >= {HIT_IOU} with the true box; centre hit: the "
        "fracture centre lies inside a reported box",
    ]
    for threshold in sorted({operating_point, *THRESHOLDS}):
        label = " (model card operating point)" if threshold == operating_point else ""
        tp = sum(1 for o in positives if o.probability >= threshold)
        tn = sum(1 for o in negatives if o.probability < threshold)
        lines += ["", f"at threshold {threshold:.3f}{label}:"]
        lines.append(f"  sensitivity                    {_pct(tp, len(positives))}")
        lines.append(f"  specificity                    {_pct(tn, len(negatives))}")
        groups: dict[str, list[bool]] = defaultdict(list)
        for o in positives:
            called = o.probability >= threshold
            for t in o.truths:
                groups[f"pattern {t.pattern}"].append(called)
                groups["displaced" if t.displaced else "non-displaced"].append(called)
            groups[f"limb {o.limb}"].append(called)
        for key in sorted(groups):
            lines.append(f"  sensitivity, {key:<18}{_pct(sum(groups[key]), len(groups[key]))}")
        loc = localisation(positives, threshold)
        lines.append(
            f"  box hit rate                   {_pct(loc.box_hits, loc.fractures)}, "
            f"mean IoU of hits {loc.mean_iou:.2f}"
        )
        lines.append(f"  centre hit rate                {_pct(loc.centre_hits, loc.fractures)}")
        negative_boxes = sum(len(o.boxes[threshold]) for o in negatives)
        lines.append(
            f"  stray boxes                    {loc.stray_boxes / max(len(positives), 1):.2f} "
            f"per fracture image, {negative_boxes / max(len(negatives), 1):.2f} per "
            "fracture-free image"
        )
    seconds = [o.seconds for o in outcomes]
    lines.append("")
    lines.append(
        f"plugin run time per image: mean {np.mean(seconds):.3f} s, max {np.max(seconds):.3f} s"
    )
    return "\n".join(lines)


def evaluate(seeds: Iterable[int], device: str = "cpu") -> tuple[list[ImageOutcome], float]:
    """Run the plugin on held-out images (the even-numbered half of them fractured)."""
    detector = FractureDetector()
    detector.load(device)
    thresholds = sorted({detector.threshold, *THRESHOLDS})
    outcomes = []
    for n, seed in enumerate(seeds):
        radiograph = generate_radiograph(seed, fracture=n % 2 == 0)
        study = make_study(radiograph, seed)
        start = time.monotonic()
        result = detector.run(study)
        seconds = time.monotonic() - start
        boxes = boxes_at(detector, radiograph, thresholds)
        outcomes.append(score(radiograph, result, seconds, boxes))
        if (n + 1) % 50 == 0:
            print(f"  {n + 1} images evaluated", flush=True)
    return outcomes, detector.threshold


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.monotonic()
    outcomes, threshold = evaluate(range(args.seed_base, args.seed_base + args.images), args.device)
    print()
    print(report(outcomes, threshold))
    print(f"total evaluation time {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
