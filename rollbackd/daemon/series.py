"""What the status page's charts draw: per target, the candidate's and the baseline's error rate
and P95 of every interval, since the release (the daemon started watching the target), in bounded
memory.

A :class:`Series` keeps at most :data:`MAX_POINTS` points. When it is full, neighbouring points
are merged pairwise (the oldest first), so it then holds half as many, each covering twice the
time: the recent past at full resolution as long as it fits, the whole release always. A merged
point's error rate is the errors over the requests of both (the rate of the span), its P95 the
higher of the two (a chart must not hide a slow interval). Memory per target is therefore at most
:data:`MAX_POINTS` points, whatever the release's length.

The points are kept as eight floats each in one :class:`array.array` (64 bytes a point), made into
:class:`Point` objects only when they are read (the API, the status page): kept as objects they
took about 400 bytes a point, 96 MB at the bound for 1,000 targets (``bench/scale.py``: the
daemon's RSS at 1,000 targets grew by 4.5 MiB a minute, past its 150 MB target).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rollbackd.detectors.latency import merge, quantile_ms
from rollbackd.model import Observation, Sample

#: The most points a target's series keeps (see the module documentation).
MAX_POINTS = 240


@dataclass(frozen=True, slots=True)
class Side:
    """One side's traffic over a point's span: counts to merge rates exactly, and its P95."""

    requests: float
    errors: float
    p95_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    def merged(self, other: Side) -> Side:
        slowest = [p for p in (self.p95_ms, other.p95_ms) if p is not None]
        return Side(self.requests + other.requests, self.errors + other.errors, max(slowest, default=None))


@dataclass(frozen=True, slots=True)
class Point:
    """One interval (or, once merged, several): ``start`` to ``t`` on the daemon's loop clock."""

    start: float
    t: float
    candidate: Side | None
    baseline: Side | None

    def merged(self, later: Point) -> Point:
        candidate, baseline = _merge(self.candidate, later.candidate), _merge(self.baseline, later.baseline)
        return Point(self.start, later.t, candidate, baseline)


def _merge(a: Side | None, b: Side | None) -> Side | None:
    if a is None:
        return b
    if b is None:
        return a
    return a.merged(b)


def _side(sample: Sample | None) -> Side | None:
    if sample is None:
        return None
    p95 = quantile_ms(sample.latency) if sample.latency is not None else sample.p95_ms
    return Side(sample.requests, sample.errors, p95)


def pooled(samples: Iterable[Sample | None]) -> Side | None:
    """One side over several intervals (``None`` for an interval without data): its requests and
    errors added up, its P95 that of the merged latency histograms (``None`` without any);
    ``None`` without any data."""
    present = [sample for sample in samples if sample is not None]
    if not present:
        return None
    merged = merge(sample.latency for sample in present)
    p95 = quantile_ms(merged) if merged is not None else None
    return Side(sum(s.requests for s in present), sum(s.errors for s in present), p95)


def point_of(obs: Observation, *, interval_s: float) -> Point:
    """The point of one observation (an interval ending at ``obs.t``)."""
    return Point(obs.t - interval_s, obs.t, _side(obs.candidate), _side(obs.baseline))


#: The floats of one point: its start and end, then each side's requests, errors and P95 (a side
#: without data has NaN requests; a P95 that is not known is NaN).
_WIDTH = 8


def _encoded(point: Point) -> tuple[float, ...]:
    return (point.start, point.t, *_side_floats(point.candidate), *_side_floats(point.baseline))


def _side_floats(side: Side | None) -> tuple[float, float, float]:
    if side is None:
        return (math.nan, math.nan, math.nan)
    return (side.requests, side.errors, math.nan if side.p95_ms is None else side.p95_ms)


def _decoded_side(requests: float, errors: float, p95: float) -> Side | None:
    if requests != requests:
        return None
    return Side(requests, errors, None if p95 != p95 else p95)


class Series:
    """A target's points since the release, at most ``max_points`` (merged pairwise when full)."""

    def __init__(self, *, max_points: int = MAX_POINTS) -> None:
        if max_points < 2 or max_points % 2:
            raise ValueError(f"a series keeps an even number of points, at least 2 (got {max_points})")
        self.max_points = max_points
        self._floats = array("d")

    def __len__(self) -> int:
        return len(self._floats) // _WIDTH

    @property
    def points(self) -> Sequence[Point]:
        f = self._floats
        return tuple(
            Point(f[i], f[i + 1], _decoded_side(f[i + 2], f[i + 3], f[i + 4]),
                  _decoded_side(f[i + 5], f[i + 6], f[i + 7]))
            for i in range(0, len(f), _WIDTH)
        )

    def add(self, point: Point) -> None:
        """Append ``point`` (a point not later than the last one is ignored: a replayed interval)."""
        if self._floats and point.t <= self._floats[-_WIDTH + 1]:
            return
        if len(self) >= self.max_points:
            points = self.points
            merged = [a.merged(b) for a, b in zip(points[::2], points[1::2], strict=True)]
            self._floats = array("d", (x for p in merged for x in _encoded(p)))
        self._floats.extend(_encoded(point))

    def extend(self, points: Iterable[Point]) -> None:
        for point in points:
            self.add(point)
