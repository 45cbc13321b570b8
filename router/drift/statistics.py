"""The statistics drift is judged by: pure functions on counts and values.

PSI (population stability index) of a baseline distribution ``e`` and a current one ``a``
over the same bins: ``sum((a_i - e_i) * ln(a_i / e_i))``, with an empty bin's proportion
raised to ``EPSILON`` (a category new in the window then weighs, instead of dividing by 0).
Rule of thumb: below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a major one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

EPSILON = 1e-4
"""The proportion an empty bin counts as in PSI."""
MAX_BINS = 10
MIN_PER_BIN = 10
"""Numeric values are cut into quantile bins of the baseline, at most ``MAX_BINS`` and about
``MIN_PER_BIN`` values of the smaller side per bin: PSI of few values over many bins is
large by chance alone."""


def psi(expected: Sequence[float], actual: Sequence[float], epsilon: float = EPSILON) -> float:
    """PSI of two proportion vectors over the same bins (each summing to 1, or all 0)."""
    if len(expected) != len(actual):
        raise ValueError("psi: the two distributions have different bins")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, epsilon), max(a, epsilon)
        total += (a - e) * math.log(a / e)
    return total


def proportions(counts: Sequence[int]) -> list[float]:
    n = sum(counts)
    return [c / n if n else 0.0 for c in counts]


def categorical_counts(
    expected: Mapping[str, int], actual: Mapping[str, int]
) -> tuple[list[str], list[int], list[int]]:
    """The categories of either side (sorted) and each side's count per category."""
    categories = sorted(set(expected) | set(actual))
    return (
        categories,
        [int(expected.get(c, 0)) for c in categories],
        [int(actual.get(c, 0)) for c in categories],
    )


def chi_square_p(expected: Sequence[int], actual: Sequence[int]) -> float:
    """p of the chi-square test that both count vectors come from one distribution (1.0 when
    there is only one category with counts)."""
    used = [(e, a) for e, a in zip(expected, actual, strict=True) if e + a > 0]
    if len(used) < 2 or sum(e for e, _ in used) == 0 or sum(a for _, a in used) == 0:
        return 1.0
    table = np.array([[e for e, _ in used], [a for _, a in used]], dtype=float)
    result = _stats().chi2_contingency(table, correction=False)
    return float(result.pvalue)


def quantile_edges(baseline: Sequence[float], smaller_n: int) -> list[float]:
    """Interior bin edges: the baseline's quantiles, as many bins as the smaller side's size
    allows (``MIN_PER_BIN`` per bin, 2 to ``MAX_BINS``), repeated edges merged."""
    if not baseline:
        return []
    bins = max(2, min(MAX_BINS, smaller_n // MIN_PER_BIN))
    qs = np.quantile(np.asarray(baseline, dtype=float), [i / bins for i in range(1, bins)])
    return sorted({float(q) for q in qs})


def binned_counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts of ``values`` in the bins (-inf, e1], (e1, e2], ..., (ek, inf)."""
    index = np.searchsorted(np.asarray(edges, dtype=float), np.asarray(values, dtype=float))
    counts = np.bincount(index, minlength=len(edges) + 1)
    return [int(c) for c in counts]


def ks_p(baseline: Sequence[float], current: Sequence[float]) -> float:
    """p of the two-sample Kolmogorov-Smirnov test (1.0 when a side is empty)."""
    if not baseline or not current:
        return 1.0
    return float(_stats().ks_2samp(baseline, current).pvalue)


def fisher_p(x1: int, n1: int, x2: int, n2: int) -> float:
    """p of Fisher's exact test that x1 of n1 and x2 of n2 are one rate (two-sided)."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    return float(_stats().fisher_exact([[x1, n1 - x1], [x2, n2 - x2]]).pvalue)


def thin_sorted(values: Sequence[float], limit: int) -> list[float]:
    """At most ``limit`` values standing for ``values``: evenly spaced order statistics of the
    sorted values (the distribution kept, its size bounded)."""
    ordered = sorted(values)
    if len(ordered) <= limit:
        return ordered
    picks = np.linspace(0, len(ordered) - 1, limit).round().astype(int)
    return [ordered[i] for i in picks]


def _stats() -> Any:
    """``scipy.stats``, imported when a test is first computed: importing it costs about a
    second at the router's start, and it inspects the process's modules (a test that hides
    torch to check the router runs without it must not break the import)."""
    from scipy import stats

    return stats
