"""The charts' series of a target: bounded whatever the release's length, merged pairwise when
full so that it always spans the whole release, with rates and P95 that stay true when merged."""

from __future__ import annotations

import itertools

import pytest

from rollbackd.daemon.series import MAX_POINTS, Point, Series, Side, point_of
from rollbackd.model import DEFAULT_BUCKETS_S, Histogram, Observation, Sample


def point(t: float, *, errors: float = 1, requests: float = 100, p95: float | None = 100.0) -> Point:
    return Point(t - 10, t, Side(requests, errors, p95), Side(100, 1, 100.0))


def test_a_long_release_stays_within_the_bound_and_spans_all_of_it() -> None:
    series = Series(max_points=8)
    for i in range(1, 1001):
        series.add(point(10.0 * i))
        assert len(series.points) <= 8
    points = series.points
    assert points[0].start == 0.0
    assert points[-1].t == 10_000.0
    assert all(a.t <= b.start for a, b in itertools.pairwise(points))
    assert sum(p.candidate.requests for p in points if p.candidate is not None) == 100 * 1000


def test_merged_points_keep_the_rate_of_the_span_and_the_slowest_p95() -> None:
    series = Series(max_points=2)
    series.add(point(10, errors=50, requests=100, p95=900.0))
    series.add(point(20, errors=0, requests=300, p95=None))
    series.add(point(30))  # full: the first two merge
    first = series.points[0]
    assert (first.start, first.t) == (0.0, 20.0)
    assert first.candidate is not None
    assert first.candidate.error_rate == pytest.approx(50 / 400)
    assert first.candidate.p95_ms == 900.0
    assert len(series.points) == 2


def test_a_gap_and_a_replayed_interval() -> None:
    series = Series()
    assert series.max_points == MAX_POINTS
    obs = Observation(target="shop/cart", t=20.0, baseline=None, candidate=None)
    series.add(point_of(obs, interval_s=10.0))
    series.add(point(20.0))  # not later than the last point: ignored
    (only,) = series.points
    assert only.candidate is None
    assert only.baseline is None


def test_the_p95_is_the_histograms() -> None:
    counts = (0, 0, 0, 10, 500, 990, 1000, 1000, 1000, 1000, 1000, 1000)
    fast = Histogram(bounds_s=DEFAULT_BUCKETS_S, counts=counts)
    obs = Observation(target="shop/cart", t=10.0, baseline=None, candidate=Sample(1000, 5, fast, p95_ms=1.0))
    candidate = point_of(obs, interval_s=10.0).candidate
    assert candidate is not None
    assert candidate.error_rate == 0.005
    assert candidate.p95_ms is not None
    assert 100.0 < candidate.p95_ms <= 250.0


def test_a_series_keeps_an_even_number_of_points() -> None:
    with pytest.raises(ValueError, match="even number"):
        Series(max_points=7)
