"""The statistics on distributions whose values are worked out by hand."""

from __future__ import annotations

import math

import pytest

from router.drift import statistics as st


def test_psi_of_two_bins_is_the_hand_computed_value() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert st.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected)
    assert st.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.274653, abs=1e-6)
    assert st.psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_an_empty_bin_counts_as_epsilon() -> None:
    # A category absent from the baseline: (0.5 - 1) ln(0.5 / 1) + (0.5 - e) ln(0.5 / e)
    e = st.EPSILON
    expected = 0.5 * math.log(2) + (0.5 - e) * math.log(0.5 / e)
    assert st.psi([1.0, 0.0], [0.5, 0.5]) == pytest.approx(expected)
    assert st.psi([1.0, 0.0], [0.5, 0.5]) == pytest.approx(4.604319, abs=1e-6)
    with pytest.raises(ValueError):
        st.psi([1.0], [0.5, 0.5])


def test_categories_are_aligned_over_both_sides() -> None:
    categories, base, cur = st.categorical_counts(
        {"B30f": 30, "B40f": 10}, {"B70f": 20, "B30f": 20}
    )
    assert categories == ["B30f", "B40f", "B70f"]
    assert (base, cur) == ([30, 10, 0], [20, 0, 20])
    assert st.proportions(base) == [0.75, 0.25, 0.0]


def test_numbers_are_binned_on_right_closed_bins() -> None:
    assert st.binned_counts([1, 2, 3, 4], [2]) == [2, 2]
    assert st.binned_counts([120, 120, 140], [120]) == [2, 1]
    assert st.binned_counts([], [1, 2]) == [0, 0, 0]
    # Quantile edges of the baseline, one bin per ten values of the smaller side, merged.
    assert st.quantile_edges([float(v) for v in range(1, 41)], 40) == [10.75, 20.5, 30.25]
    assert st.quantile_edges([120.0] * 50, 50) == [120.0]
    assert st.quantile_edges([1.0, 2.0], 5) == [1.5]  # at least two bins


def test_ks_p_of_separated_samples_is_the_exact_value() -> None:
    # All 3 below all 3: 2 of the C(6, 3) = 20 orderings are as extreme (two-sided).
    assert st.ks_p([1, 2, 3], [4, 5, 6]) == pytest.approx(2 / 20)
    assert st.ks_p([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert st.ks_p([], [1.0]) == 1.0


def test_chi_square_p_is_the_hand_computed_value() -> None:
    assert st.chi_square_p([10, 10], [10, 10]) == pytest.approx(1.0)
    # 2x2 table [[20, 0], [0, 20]]: chi2 = 40 with 1 degree of freedom, p = erfc(sqrt(20)).
    assert st.chi_square_p([20, 0], [0, 20]) == pytest.approx(math.erfc(math.sqrt(20)))
    assert st.chi_square_p([5, 0], [7, 0]) == 1.0  # one category: nothing to test


def test_fisher_p_is_the_hypergeometric_sum() -> None:
    # [[1, 9], [9, 1]]: tables as or less likely than it with the same margins (10, 10; 10, 10)
    # are a = 0, 1, 9, 10 of the first cell.
    def probability(a: int) -> float:
        return math.comb(10, a) * math.comb(10, 10 - a) / math.comb(20, 10)

    expected = sum(probability(a) for a in (0, 1, 9, 10))
    assert st.fisher_p(1, 10, 9, 10) == pytest.approx(expected)
    assert st.fisher_p(5, 10, 5, 10) == pytest.approx(1.0)
    assert st.fisher_p(0, 0, 1, 2) == 1.0


def test_thinning_keeps_evenly_spaced_order_statistics() -> None:
    assert st.thin_sorted([5.0, 1.0, 3.0], 10) == [1.0, 3.0, 5.0]
    thinned = st.thin_sorted([float(v) for v in range(101)], 11)
    assert thinned == [float(v) for v in range(0, 101, 10)]
