"""The detectors on hand-built observations: what counts as a breach, how bad, whose fault, and
when there is simply not enough data."""

from __future__ import annotations

import dataclasses
import math
import tracemalloc
from collections.abc import Sequence

import pytest

from rollbackd.detectors.judge import MAX_TICKS, Judge
from rollbackd.detectors.latency import count_at_or_below, merge, quantile_ms, slow_count
from rollbackd.model import (
    DEFAULT_BUCKETS_S,
    Evidence,
    HealthCheck,
    Histogram,
    Impact,
    Observation,
    Sample,
    Slo,
    Strategy,
)
from rollbackd.params import Detection, TargetParams

CANARY = TargetParams(key="shop/checkout", strategy=Strategy.CANARY, interval_s=10.0)
BLUE_GREEN = TargetParams(key="shop/checkout", strategy=Strategy.BLUE_GREEN, interval_s=10.0)


def hist(requests: int, median_bucket: int = 5) -> Histogram:
    """All requests in one bucket (index into the default buckets): cumulative counts."""
    return Histogram(
        bounds_s=DEFAULT_BUCKETS_S,
        counts=tuple(float(requests if i >= median_bucket else 0) for i in range(len(DEFAULT_BUCKETS_S))),
    )


def side(requests: int, errors: int, bucket: int = 5) -> Sample:
    return Sample(requests=requests, errors=errors, latency=hist(requests, bucket))


def feed(
    judge: Judge, ticks: Sequence[tuple[Sample | None, Sample | None]], start: float = 0.0
) -> list[Evidence]:
    return [
        judge.observe(Observation(target="shop/checkout", t=start + 10.0 * i, baseline=b, candidate=c))
        for i, (b, c) in enumerate(ticks)
    ]


HEALTHY = (side(900, 2), side(100, 0))


def test_histogram_helpers_follow_histogram_quantile() -> None:
    h = Histogram(bounds_s=(0.1, 0.5, 1.0, math.inf), counts=(50.0, 90.0, 100.0, 100.0))
    assert quantile_ms(h) == pytest.approx(750.0)  # rank 95 halfway through (0.5, 1.0]
    assert count_at_or_below(h, 0.75) == pytest.approx(95.0)
    assert slow_count(h, 500.0) == pytest.approx(10.0)
    merged = merge([h, h, None])
    assert merged is not None
    assert merged.counts == (100.0, 180.0, 200.0, 200.0)
    assert merge([None]) is None


def test_one_bad_interval_is_noise() -> None:
    judge = Judge(CANARY)
    evidence = feed(judge, [HEALTHY] * 18 + [(side(900, 2), side(100, 40))] + [HEALTHY] * 10)
    assert all(e.impact is Impact.NONE for e in evidence)


def test_two_severe_intervals_are_a_severe_attributable_breach_on_the_second() -> None:
    judge = Judge(CANARY)
    evidence = feed(judge, [HEALTHY] * 18 + [(side(900, 2), side(100, 30))] * 2)
    assert evidence[-2].impact is Impact.NONE
    last = evidence[-1]
    assert last.impact is Impact.SEVERE
    assert last.attributable
    assert last.since == 180.0
    finding = next(f for f in last.findings if f.signal == "error_rate")
    assert finding.value == pytest.approx(0.30)
    assert finding.threshold == 0.01
    assert finding.confidence > 0.999
    assert "30.00%" in finding.detail
    assert "baseline" in finding.detail


def test_a_trickle_with_one_error_is_not_a_breach() -> None:
    judge = Judge(CANARY)
    ticks = [(side(990, 1), side(3, 0))] * 30
    ticks[20] = (side(990, 1), side(3, 1))  # "33% errors"
    ticks[21] = (side(990, 1), side(4, 1))  # "25% errors"
    assert all(e.impact is Impact.NONE for e in feed(judge, ticks))


def test_too_little_traffic_is_inconclusive() -> None:
    judge = Judge(CANARY)
    evidence = feed(judge, [(side(990, 1), side(1, 0))] * 5)
    assert all(e.inconclusive for e in evidence)
    assert any("fewer than the" in r for r in evidence[-1].reasons)


def test_a_scrape_gap_is_inconclusive_never_zero() -> None:
    judge = Judge(CANARY)
    evidence = feed(judge, [HEALTHY] * 10 + [(None, None)] * 3)
    assert not evidence[9].inconclusive
    assert all(e.inconclusive and not e.breached for e in evidence[10:])


def test_a_global_incident_is_not_attributable() -> None:
    judge = Judge(CANARY)
    evidence = feed(judge, [HEALTHY] * 18 + [(side(900, 110), side(100, 12))] * 12)
    breached = [e for e in evidence if e.breached]
    assert breached
    assert not any(e.attributable for e in breached)
    assert any("not significantly worse" in r for r in breached[-1].reasons)


def test_a_canary_much_worse_than_a_degraded_baseline_is_attributable() -> None:
    judge = Judge(CANARY)
    evidence = feed(judge, [HEALTHY] * 18 + [(side(900, 20), side(100, 30))] * 3)
    assert evidence[-1].impact is Impact.SEVERE
    assert evidence[-1].attributable


def test_moderate_errors_are_manageable_with_an_onset_near_the_fault() -> None:
    judge = Judge(CANARY)
    evidence = feed(judge, [HEALTHY] * 18 + [(side(900, 2), side(100, 3))] * 12)
    breached = [e for e in evidence if e.breached]
    assert breached
    assert all(e.impact is Impact.MANAGEABLE for e in breached)
    assert breached[-1].since is not None
    assert 180.0 <= breached[-1].since <= 200.0


def test_latency_regression_from_histograms() -> None:
    judge = Judge(CANARY)
    slow = Sample(requests=100, errors=0, latency=hist(100, median_bucket=8))  # everything in (1 s, 2.5 s]
    evidence = feed(judge, [HEALTHY] * 18 + [(side(900, 2), slow)] * 2)
    finding = next(f for f in evidence[-1].findings if f.signal == "p95")
    assert evidence[-1].impact is Impact.SEVERE
    assert finding.value is not None
    assert finding.value > 1000.0
    assert finding.threshold == 500.0


def test_blue_green_compares_with_the_baseline_history_before_the_switch() -> None:
    judge = Judge(BLUE_GREEN)
    before = [(side(1000, 2), Sample(requests=0, errors=0))] * 18
    after_bad = [(Sample(requests=0, errors=0), side(1000, 200))] * 2
    evidence = feed(judge, before + after_bad)
    assert evidence[-1].impact is Impact.SEVERE
    assert evidence[-1].attributable
    judge = Judge(BLUE_GREEN)
    after_good = [(Sample(requests=0, errors=0), side(1000, 2))] * 20
    assert not any(e.breached for e in feed(judge, before + after_good))


def test_judging_again_with_new_parameters_keeps_the_history_before_the_window() -> None:
    params = dataclasses.replace(BLUE_GREEN, detection=Detection(window_s=100.0, baseline_window_s=300.0))
    judge = Judge(params)
    before = [(side(1000, 2), Sample(requests=0, errors=0))] * 18
    after_bad = [(Sample(requests=0, errors=0), side(1000, 200))] * 12
    evidence = feed(judge, before + after_bad)
    assert evidence[-1].attributable
    kept = judge.kept()
    assert [obs.t for obs in kept] == [10.0 * i for i in range(20, 30)]  # the window: the last 100 s
    # The same parameters judge the same; stricter ones still blame the release, on the baseline's
    # history from before the window, which carries over.
    _, same = judge.rejudged(params)
    assert same[-1] == evidence[-1]
    stricter = dataclasses.replace(params, slo=Slo(max_error_rate=0.005))
    _, again = judge.rejudged(stricter)
    assert again[-1].impact is Impact.SEVERE
    assert again[-1].attributable
    # Without that history there would be nothing to compare with.
    blind = Judge(stricter)
    assert not [blind.observe(obs) for obs in kept][-1].attributable


def test_failing_candidate_health_twice_is_severe_unless_the_baseline_fails_too() -> None:
    ok = (HealthCheck("/readyz", 200),)
    bad = (HealthCheck("/readyz", 503),)
    for baseline_health, attributable in [(ok, True), (bad, False)]:
        judge = Judge(CANARY)
        evidence = []
        for i in range(20):
            failing = i >= 18
            evidence.append(
                judge.observe(
                    Observation(
                        target="shop/checkout",
                        t=10.0 * i,
                        baseline=HEALTHY[0],
                        candidate=HEALTHY[1],
                        health_candidate=bad if failing else ok,
                        health_baseline=baseline_health if failing else ok,
                    )
                )
            )
        assert not evidence[18].breached  # one failing probe is noise
        assert evidence[19].breached
        assert evidence[19].attributable is attributable
        assert any("/readyz 503" in r for r in evidence[19].reasons)


def test_recovery_is_seen_from_recent_data() -> None:
    judge = Judge(CANARY)
    moderate = (side(900, 2), side(100, 3))
    evidence = feed(judge, [HEALTHY] * 18 + [moderate] * 15 + [HEALTHY] * 8)
    assert evidence[32].breached
    assert not evidence[-1].breached
    assert evidence[-1].within_slo


def test_memory_stays_bounded_however_long_it_runs() -> None:
    # Windows far longer than MAX_TICKS intervals: only the cap on ticks kept bounds the state.
    long = Detection(window_s=10 * MAX_TICKS, baseline_window_s=10 * MAX_TICKS)
    judge = Judge(TargetParams(key="k", strategy=Strategy.CANARY, interval_s=0.01, detection=long))
    ticks = iter(range(10 * MAX_TICKS))
    ok = (HealthCheck("/readyz", 200),)

    def run(count: int) -> None:
        for i, _ in zip(ticks, range(count), strict=False):
            judge.observe(Observation(target="k", t=i * 0.01, baseline=HEALTHY[0], candidate=HEALTHY[1],
                                      health_baseline=ok, health_candidate=ok))

    tracemalloc.start()  # (it counts what was allocated since, and is still held)
    try:
        run(2 * MAX_TICKS + 100)  # the window full, and the past behind it
        before = tracemalloc.get_traced_memory()[0]
        run(MAX_TICKS // 2)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Keeping every tick would cost about 150 bytes each: 300 kB here.
    assert grown < 8 * MAX_TICKS
