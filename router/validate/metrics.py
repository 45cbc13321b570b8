"""Diagnostic accuracy of an algorithm's scores against the truth: ROC and its area with a
bootstrap confidence interval, sensitivity and specificity at a threshold (with Wilson
intervals), the threshold that maximises Youden's J, and calibration in bins. Pure
functions over plain lists."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

BOOTSTRAP_RESAMPLES = 2000
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Rates:
    """Sensitivity and specificity at one threshold (a score at or above it is positive)."""

    threshold: float
    sensitivity: float
    specificity: float
    true_positives: int
    false_negatives: int
    true_negatives: int
    false_positives: int


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    count: int
    mean_score: float
    observed_rate: float


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic: ties count half); None unless
    both classes are present."""
    positives = sorted(s for s, label in zip(scores, labels, strict=True) if label)
    negatives = sorted(s for s, label in zip(scores, labels, strict=True) if not label)
    if not positives or not negatives:
        return None
    wins = 0.0
    for score in positives:
        below = _count_below(negatives, score)
        ties = _count_below(negatives, score, inclusive=True) - below
        wins += below + ties / 2.0
    return wins / (len(positives) * len(negatives))


def auc_interval(
    scores: Sequence[float],
    labels: Sequence[bool],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
    seed: int = 20261202,
) -> tuple[float, float] | None:
    """A percentile bootstrap interval of the AUC, resampling cases within each class (so every
    resample has both); None unless both classes are present."""
    positives = [s for s, label in zip(scores, labels, strict=True) if label]
    negatives = [s for s, label in zip(scores, labels, strict=True) if not label]
    if not positives or not negatives:
        return None
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        p = rng.choices(positives, k=len(positives))
        n = rng.choices(negatives, k=len(negatives))
        value = auc(p + n, [True] * len(p) + [False] * len(n))
        assert value is not None
        values.append(value)
    values.sort()
    tail = (1.0 - level) / 2.0
    low = values[max(0, math.floor(tail * resamples))]
    high = values[min(resamples - 1, math.ceil((1.0 - tail) * resamples) - 1)]
    return low, high


def proportion_interval(hits: int, total: int, level: float = 0.95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion such as a sensitivity (``hits`` of ``total``):
    unlike hits/total +- z*SE it stays inside [0, 1] and is not empty at 0 or ``total`` hits,
    which matters for the few dozen cases of a local validation. None when ``total`` is 0."""
    if total <= 0:
        return None
    if not 0 <= hits <= total:
        raise ValueError(f"{hits} hits of {total}")
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2.0)
    p = hits / total
    denominator = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rates_at(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> Rates:
    return rates_of([s >= threshold for s in scores], labels, threshold)


def rates_of(calls: Sequence[bool], labels: Sequence[bool], threshold: float = math.nan) -> Rates:
    """Rates of yes/no calls (the algorithm's own verdicts) against the truth."""
    pairs = list(zip(calls, labels, strict=True))
    tp = sum(1 for call, label in pairs if call and label)
    fn = sum(1 for call, label in pairs if not call and label)
    tn = sum(1 for call, label in pairs if not call and not label)
    fp = sum(1 for call, label in pairs if call and not label)
    return _counted(threshold, tp, fn, tn, fp)


def _counted(threshold: float, tp: int, fn: int, tn: int, fp: int) -> Rates:
    return Rates(
        threshold=threshold,
        sensitivity=tp / (tp + fn) if tp + fn else math.nan,
        specificity=tn / (tn + fp) if tn + fp else math.nan,
        true_positives=tp,
        false_negatives=fn,
        true_negatives=tn,
        false_positives=fp,
    )


def sweep(scores: Sequence[float], labels: Sequence[bool]) -> Iterator[Rates]:
    """``rates_at`` every distinct score as the threshold, highest first, in O(n log n): the
    cases sorted once by score, the counts carried from one threshold to the next."""
    pairs = sorted(zip(scores, labels, strict=True), key=lambda pair: pair[0], reverse=True)
    positives = sum(1 for _, label in pairs if label)
    negatives = len(pairs) - positives
    tp = fp = 0
    start = 0
    while start < len(pairs):
        threshold = pairs[start][0]  # the first of equal scores, as set() keeps it
        end = start
        while end < len(pairs) and pairs[end][0] == threshold:
            if pairs[end][1]:
                tp += 1
            else:
                fp += 1
            end += 1
        yield _counted(threshold, tp, positives - tp, negatives - fp, fp)
        start = end


def roc_points(scores: Sequence[float], labels: Sequence[bool]) -> list[tuple[float, float]]:
    """(1 - specificity, sensitivity) at every distinct threshold, from (0, 0) to (1, 1)."""
    points = [(0.0, 0.0)]
    for rates in sweep(scores, labels):
        points.append((1.0 - rates.specificity, rates.sensitivity))
    points.append((1.0, 1.0))
    return points


def youden_threshold(scores: Sequence[float], labels: Sequence[bool]) -> Rates | None:
    """The threshold among the scores with the largest sensitivity + specificity - 1 (the
    highest such threshold on a tie); None unless both classes are present."""
    if all(labels) or not any(labels):
        return None
    best: Rates | None = None
    for rates in sweep(scores, labels):
        if best is None or (
            rates.sensitivity + rates.specificity > best.sensitivity + best.specificity
        ):
            best = rates
    return best


def calibration(
    scores: Sequence[float], labels: Sequence[bool], bins: int = CALIBRATION_BINS
) -> list[CalibrationBin]:
    """Scores (probabilities in [0, 1]) in equal-width bins: the mean score against the share
    of positives in each non-empty bin."""
    result = []
    for index in range(bins):
        low, high = index / bins, (index + 1) / bins
        inside = [
            (s, label)
            for s, label in zip(scores, labels, strict=True)
            if low <= s < high or (index == bins - 1 and s == 1.0)
        ]
        if inside:
            result.append(
                CalibrationBin(
                    low,
                    high,
                    len(inside),
                    sum(s for s, _ in inside) / len(inside),
                    sum(1 for _, label in inside if label) / len(inside),
                )
            )
    return result


def _count_below(values: Sequence[float], score: float, inclusive: bool = False) -> int:
    """How many of the sorted ``values`` are below ``score`` (or at most, ``inclusive``)."""
    low, high = 0, len(values)
    while low < high:
        middle = (low + high) // 2
        if values[middle] < score or (inclusive and values[middle] == score):
            low = middle + 1
        else:
            high = middle
    return low
