"""Exact binomial statistics: correct at low counts, continuous for fractional counts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.detectors.latency import count_at_or_below, merge, slow_count
from rollbackd.detectors.stats import betainc, binom_sf, exceeds_rate, exceeds_ratio, within_rate
from rollbackd.evaluate import TargetEvaluator
from rollbackd.model import (
    DEFAULT_BUCKETS_S,
    Context,
    Histogram,
    Observation,
    Outcome,
    Sample,
    Strategy,
    histogram_quantile,
)
from rollbackd.params import TargetParams
from rollbackd.plausibility import ERRORS_SLACK, sample_problem
from tests.faultledger import FaultLedger


def _binom_sf_by_sum(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(0, 10, 0.1), (1, 3, 0.01), (2, 6, 0.01), (5, 100, 0.01), (30, 95, 0.01), (17, 40, 0.3), (40, 40, 0.5)],
)
def test_binomial_tail_matches_the_exact_sum(k: int, n: int, p: float) -> None:
    assert binom_sf(k, n, p) == pytest.approx(_binom_sf_by_sum(k, n, p), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(
    ("k", "n", "p"), [(0, 1, 0.01), (0, 50, 0.05), (0, 400, 0.01), (1, 50, 0.05), (3, 95, 0.01)]
)
def test_the_proof_of_being_within_a_rate_matches_the_exact_sum(k: int, n: int, p: float) -> None:
    # P(X <= k): small when k events in n trials prove the rate below p (none of them in a
    # closed form, the others through the binomial tail).
    assert within_rate(k, n, p) == pytest.approx(1 - _binom_sf_by_sum(k + 1, n, p), rel=1e-9, abs=1e-15)


def test_betainc_edges_and_symmetry() -> None:
    assert betainc(2.0, 3.0, 0.0) == 0.0
    assert betainc(2.0, 3.0, 1.0) == 1.0
    assert betainc(2.5, 4.0, 0.3) == pytest.approx(1 - betainc(4.0, 2.5, 0.7), rel=1e-12)
    assert math.isnan(betainc(0.0, 1.0, 0.5))  # outside its domain: no answer, no exception


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


def test_huge_counts_are_judged_not_raised() -> None:
    # 1e308 requests overflowed lgamma: OverflowError for a whole detection window.
    assert exceeds_rate(1e308, 1e308, 0.01) == 0.0  # every request failed: as proven as can be
    assert exceeds_rate(1e306, 1e307, 0.2) == 1.0  # 10% against 20%: no evidence at all
    assert exceeds_rate(3e305, 1e306, 0.3) == pytest.approx(0.5)
    assert exceeds_ratio(1e308, 1e308, 1e308, 1e308, 1.5) == 1.0  # equal rates, huge counts
    assert exceeds_ratio(1e308, 1.5e308, 1.0, 1.5e308, 1.5) == 0.0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_meaningless_arguments_are_no_evidence(value: float) -> None:
    assert exceeds_rate(value, value, 0.01) == 1.0
    assert exceeds_rate(5.0, 100.0, math.nan) == 1.0
    assert binom_sf(value, value, 0.5) == 1.0
    assert exceeds_ratio(value, value, value, value, 1.5) == 1.0


# Property tests: any floats, no exception, answers in range


ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
COUNT = st.one_of(
    ANY_FLOAT,
    st.floats(min_value=0, max_value=1e6),
    st.sampled_from([0.0, 1.0, 1e12, 1e305, 1e308, -1.0, math.inf, math.nan, 5e-324]),
)


def _p_value(value: float) -> bool:
    return 0.0 <= value <= 1.0


@pytest.mark.faults
@settings(max_examples=600)
@given(a=COUNT, b=COUNT, c=COUNT, d=COUNT, r=COUNT)
def test_the_statistics_are_total(fault_ledger: FaultLedger, a: float, b: float, c: float, d: float,
                                  r: float) -> None:
    fault_ledger.inputs(1)
    assert _p_value(exceeds_rate(a, b, r))
    assert _p_value(exceeds_rate(a, b, 0.01))
    assert _p_value(exceeds_ratio(a, b, c, d, r))
    assert _p_value(exceeds_ratio(a, b, c, d, 1.5))
    assert _p_value(binom_sf(a, b, r))
    beta = betainc(a, b, r)
    assert math.isnan(beta) or _p_value(beta)


@pytest.mark.faults
@settings(max_examples=400)
@given(counts=st.lists(COUNT, min_size=12, max_size=12), q=COUNT, limit=COUNT)
def test_histogram_reading_is_total(fault_ledger: FaultLedger, counts: list[float], q: float,
                                    limit: float) -> None:
    fault_ledger.inputs(1)
    hist = Histogram(DEFAULT_BUCKETS_S, tuple(counts))
    value = histogram_quantile(q, DEFAULT_BUCKETS_S, counts)
    assert value is None or 0.0 <= value <= DEFAULT_BUCKETS_S[-2]
    slow_count(hist, limit)
    count_at_or_below(hist, limit)
    merge([hist, hist, None])


def _sample(requests: float, errors: float, bucket_counts: list[float] | None) -> Sample:
    latency = Histogram(DEFAULT_BUCKETS_S, tuple(bucket_counts)) if bucket_counts is not None else None
    return Sample(requests=requests, errors=errors, latency=latency)


SAMPLES = st.one_of(
    st.none(),
    st.builds(_sample, COUNT, COUNT, st.one_of(st.none(), st.lists(COUNT, min_size=12, max_size=12))),
    # Plausible traffic too, so the detectors' later stages (episodes, attribution) are reached.
    st.builds(
        lambda n, share, slow: Sample(
            requests=n, errors=n * share,
            latency=Histogram(DEFAULT_BUCKETS_S, tuple([n * (1 - slow)] * 11 + [n])),
        ),
        st.floats(min_value=0, max_value=1e12), st.floats(min_value=0, max_value=1),
        st.floats(min_value=0, max_value=1),
    ),
)


@pytest.mark.faults
@settings(max_examples=150)
@given(
    ticks=st.lists(st.tuples(SAMPLES, SAMPLES), min_size=1, max_size=30),
    strategy=st.sampled_from(list(Strategy)),
)
def test_the_judge_and_decision_are_total_and_never_act_on_impossible_data(
    fault_ledger: FaultLedger, ticks: list[tuple[Sample | None, Sample | None]], strategy: Strategy
) -> None:
    fault_ledger.inputs(1)
    params = TargetParams(key="shop/web", strategy=strategy, interval_s=10.0)
    evaluator = TargetEvaluator(params)
    actions_on_bad_data = 0
    for i, (baseline, candidate) in enumerate(ticks):
        decision = evaluator.step(
            Observation(target="shop/web", t=10.0 * i, baseline=baseline, candidate=candidate), Context()
        )
        assert decision.outcome in set(Outcome)
        assert decision.evidence is not None
        for finding in decision.evidence.findings:
            assert 0.0 <= finding.confidence <= 1.0
        impossible = any(
            sample is not None and sample_problem(sample, errors_slack=ERRORS_SLACK) is not None
            for sample in (baseline, candidate)
        )
        if impossible:
            # Not judged: inconclusive, or, inside an open breach episode, the episode's verdict
            # kept without acting (missing data neither closes an episode nor rolls back).
            assert not decision.rollback
            assert "impossible metrics this interval, not judged" in decision.reason
            if decision.episode is None:
                assert decision.outcome is Outcome.INCONCLUSIVE
            actions_on_bad_data += decision.rollback
    fault_ledger.observe(actions_on_bad_data=actions_on_bad_data)
    assert actions_on_bad_data == 0
