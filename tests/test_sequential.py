"""The anytime-valid tests against simulation: a healthy release is (almost) never rejected however
often it is looked at, a bad one is, a late change is caught, and no input makes them raise."""

from __future__ import annotations

import itertools
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.detectors.sequential import (
    FACTORS,
    EDetector,
    alt_rate,
    interval_cap,
    log_ratio,
    log_ratios,
    log_start_weight,
    share_null,
    threshold,
)

SLO = 0.01


def binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(1 for _ in range(n) if rng.random() < p)


def first_rejection(
    rng: random.Random, *, rate: float, trials: int, looks: int, alpha: float, interval_s: float = 10.0
) -> int | None:
    """The look at which the one-sample test of "rate above the SLO" rejects, or ``None``."""
    test, cap = EDetector(), interval_cap(alpha)
    for i in range(looks):
        test = test.observe(i * interval_s, binomial(rng, trials, rate), trials, SLO, cap=cap)
        if test.rejects(alpha):
            return i
    return None


def test_a_release_at_the_slo_is_rejected_less_often_than_alpha_however_often_it_is_looked_at() -> None:
    """Ville's inequality: P(ever rejecting) <= alpha. At a deliberately high alpha (0.2) and 300
    looks of each of 300 releases exactly at the SLO (the hardest null), the rejections stay below
    alpha with room for the simulation's noise (the binomial sd at 300 runs is 0.023)."""
    rng = random.Random(16)
    alpha = 0.2
    rejected = sum(
        first_rejection(rng, rate=SLO, trials=30, looks=300, alpha=alpha) is not None for _ in range(300)
    )
    assert rejected / 300 < alpha - 0.05


def test_a_release_below_the_slo_is_as_safe() -> None:
    """The null is composite: any rate under the SLO (here half of it, at high traffic) is safe."""
    rng = random.Random(17)
    alpha = 0.2
    rejected = sum(
        first_rejection(rng, rate=SLO / 2, trials=200, looks=200, alpha=alpha) is not None for _ in range(200)
    )
    assert rejected / 200 < alpha - 0.05


def test_a_breach_is_rejected_and_sooner_the_larger_it_is() -> None:
    rng = random.Random(18)
    alpha = 0.01
    severe = [first_rejection(rng, rate=30 * SLO, trials=100, looks=50, alpha=alpha) for _ in range(20)]
    moderate = [first_rejection(rng, rate=3 * SLO, trials=100, looks=300, alpha=alpha) for _ in range(20)]
    assert all(look is not None for look in severe + moderate)
    assert max(look for look in severe if look is not None) <= 4
    assert sorted(look for look in moderate if look is not None)[10] > 4


def test_a_breach_at_low_traffic_is_caught_given_time() -> None:
    """5x the SLO at 3 requests an interval (one error in 7 intervals): evidence accumulates since
    the release, where a window of 60 intervals holds too few errors to prove anything."""
    rng = random.Random(19)
    looks = [first_rejection(rng, rate=5 * SLO, trials=3, looks=3000, alpha=0.01) for _ in range(10)]
    assert all(look is not None for look in looks)


def test_a_release_healthy_for_an_hour_that_turns_bad_is_caught_quickly() -> None:
    """The change-point mixture: an hour at a tenth of the SLO, then 3x it; the rejection comes
    within a few minutes of the change, not after the hour of good evidence is undone."""
    rng = random.Random(20)
    alpha = 0.01
    for _ in range(5):
        test, cap = EDetector(), interval_cap(alpha)
        for i in range(360):
            test = test.observe(i * 10.0, binomial(rng, 100, SLO / 10), 100, SLO, cap=cap)
            assert not test.rejects(alpha)
        for i in range(360, 720):
            test = test.observe(i * 10.0, binomial(rng, 100, 3 * SLO), 100, SLO, cap=cap)
            if test.rejects(alpha):
                break
        assert test.rejects(alpha)
        assert i - 360 <= 40
        segment = test.strongest()
        assert segment is not None
        assert segment.since >= 3000.0  # the span since the change


def test_the_two_sample_test_holds_alpha_when_both_arms_fail_alike_and_rejects_a_worse_candidate() -> None:
    """Candidate against 1.5x its baseline, conditional on each interval's errors, with a traffic
    split that changes from interval to interval and both arms well above the SLO (a platform
    incident)."""
    rng = random.Random(21)
    alpha = 0.2

    def run(candidate_rate: float, looks: int) -> int | None:
        test, cap = EDetector(), interval_cap(alpha)
        for i in range(looks):
            n_c, n_b = binomial(rng, rng.choice((10, 40, 120)), 0.5), binomial(rng, 800, 0.5)
            e_c, e_b = binomial(rng, n_c, candidate_rate), binomial(rng, n_b, 0.05)
            test = test.observe(
                i * 10.0, e_c, e_c + e_b, share_null(n_c, n_b, 1.5), cap=cap, tally=(e_c, n_c, e_b, n_b)
            )
            if test.rejects(alpha):
                return i
        return None

    healthy = sum(run(0.05, 200) is not None for _ in range(150))
    assert healthy / 150 < alpha - 0.05
    worse = [run(0.25, 200) for _ in range(10)]
    assert all(look is not None for look in worse)


def test_fractional_counts_count_as_what_they_are() -> None:
    test = EDetector().observe(10.0, 2.5, 40.4, SLO).observe(20.0, 0.25, 3.3, SLO)
    segment = test.strongest()
    assert segment is not None
    assert math.isclose(segment.hits, 2.75)
    assert math.isclose(segment.trials, 43.7)
    assert math.isclose(log_ratio(2.5, 40.4, SLO, 2.0), 2.5 * math.log(2.0) - 40.4 * math.log1p(SLO))


def test_the_change_point_weights_add_up_to_at_most_one() -> None:
    ticks = [i * 7.0 for i in range(20_000)]
    total = math.exp(log_start_weight(0.0, None, 0.0)) + sum(
        math.exp(log_start_weight(0.0, before, t)) for before, t in itertools.pairwise(ticks)
    )
    assert 0.99 < total <= 1.0


def test_alternatives_lie_above_the_null() -> None:
    for factor in (1.25, 3.0, 100.0):
        assert SLO < alt_rate(SLO, factor) < 1.0
    assert alt_rate(SLO, 1.0) == SLO


def test_a_tick_at_or_before_the_latest_adds_nothing() -> None:
    test = EDetector().observe(10.0, 5.0, 10.0, SLO)
    assert test.observe(10.0, 5.0, 10.0, SLO) == test
    assert test.observe(5.0, 5.0, 10.0, SLO) == test


numbers = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=300, deadline=None)
@given(hits=numbers, trials=numbers, null_p=numbers, factor=numbers)
def test_log_ratio_is_total_and_finite(hits: float, trials: float, null_p: float, factor: float) -> None:
    assert math.isfinite(log_ratio(hits, trials, null_p, factor))


@settings(max_examples=300, deadline=None)
@given(hits=numbers, trials=numbers, null_p=numbers, factors=st.lists(numbers, max_size=4))
def test_log_ratios_are_log_ratio_for_each_factor(
    hits: float, trials: float, null_p: float, factors: list[float]
) -> None:
    together = log_ratios(hits, trials, null_p, (*factors, *FACTORS))
    assert log_ratios(hits, trials, null_p, (*factors, *FACTORS)) == together  # from the cache too
    assert together == [log_ratio(hits, trials, null_p, factor) for factor in (*factors, *FACTORS)]


@settings(max_examples=200, deadline=None)
@given(
    ticks=st.lists(st.tuples(numbers, numbers, numbers, st.one_of(st.none(), numbers)), max_size=8),
    alpha=numbers,
)
def test_the_detector_is_total(ticks: list[tuple[float, float, float, float | None]], alpha: float) -> None:
    test = EDetector()
    for t, hits, trials, null_p in ticks:
        test = test.observe(t, hits, trials, null_p, cap=interval_cap(alpha) if alpha == alpha else 1.0)
    assert not math.isnan(test.log_evidence())
    assert isinstance(test.rejects(alpha), bool)
    assert threshold(alpha) > 0


def test_log_ratio_stays_finite_at_counts_near_the_float_range() -> None:
    # Found by hypothesis: 0 hits in 4e307 trials overflowed the second term to -inf.
    assert math.isfinite(log_ratio(0.0, 4.03e307, 0.5, 173.0))
    assert log_ratio(0.0, 4.03e307, 0.5, 173.0) < 0.0
    assert math.isfinite(log_ratio(1.7e308, 1.7e308, 0.5, 1e300))
