"""Exact binomial statistics: correct at low counts, continuous for fractional counts."""

from __future__ import annotations

import math

import pytest

from rollbackd.detectors.stats import betainc, binom_sf, exceeds_rate, exceeds_ratio


def _binom_sf_by_sum(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(0, 10, 0.1), (1, 3, 0.01), (2, 6, 0.01), (5, 100, 0.01), (30, 95, 0.01), (17, 40, 0.3), (40, 40, 0.5)],
)
def test_binomial_tail_matches_the_exact_sum(k: int, n: int, p: float) -> None:
    assert binom_sf(k, n, p) == pytest.approx(_binom_sf_by_sum(k, n, p), rel=1e-9, abs=1e-15)


def test_betainc_edges_and_symmetry() -> None:
    assert betainc(2.0, 3.0, 0.0) == 0.0
    assert betainc(2.0, 3.0, 1.0) == 1.0
    assert betainc(2.5, 4.0, 0.3) == pytest.approx(1 - betainc(4.0, 2.5, 0.7), rel=1e-12)
    with pytest.raises(ValueError, match="a > 0"):
        betainc(0.0, 1.0, 0.5)


def test_one_error_in_a_trickle_is_weak_evidence() -> None:
    # 1 failed request out of 4 is a "25% error rate" by its estimate, yet under a 1% SLO it
    # happens by chance about 4% of the time: nowhere near 99% confidence.
    assert exceeds_rate(1, 4, 0.01) > 0.03
    # 30 of 95 is overwhelming.
    assert exceeds_rate(30, 95, 0.01) < 1e-20


def test_fractional_counts_are_continuous() -> None:
    low = exceeds_rate(4.9, 100.0, 0.01)
    mid = exceeds_rate(5.0, 100.0, 0.01)
    high = exceeds_rate(5.1, 100.0, 0.01)
    assert low > mid > high


def test_ratio_test_handles_zero_baseline_errors_and_no_difference() -> None:
    # Candidate 6/100 against a baseline with no errors in 1000: clearly worse.
    assert exceeds_ratio(6, 100, 0, 1000, 1.5) < 1e-4
    # Same rate on both sides: no evidence at all.
    assert exceeds_ratio(10, 100, 100, 1000, 1.0) > 0.3
    # Nothing to compare with.
    assert exceeds_ratio(5, 100, 0, 0, 1.5) == 1.0
    assert exceeds_ratio(0, 100, 5, 1000, 1.5) == 1.0
