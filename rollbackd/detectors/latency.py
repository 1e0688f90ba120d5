"""Latency from histogram buckets: merge intervals, read a quantile, count the slow requests.

A P95 ceiling is breached exactly when more than 5% of requests are slower than the ceiling, so
latency becomes a proportion the same exact tests judge as error rates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from rollbackd.model import Histogram, histogram_quantile


def merge(histograms: Iterable[Histogram | None]) -> Histogram | None:
    """Sum interval histograms that share bucket bounds (the first one's bounds win; others are
    skipped). ``None`` when there is nothing to merge."""
    bounds: tuple[float, ...] | None = None
    chosen: list[tuple[float, ...]] = []
    for hist in histograms:
        if hist is None or not hist.counts:
            continue
        if bounds is None:
            bounds = hist.bounds_s
        if hist.bounds_s != bounds:
            continue
        chosen.append(hist.counts)
    if bounds is None:
        return None
    return Histogram(bounds_s=bounds, counts=tuple(sum(column, 0.0) for column in zip(*chosen, strict=True)))


def quantile_ms(hist: Histogram | None, q: float = 0.95) -> float | None:
    if hist is None:
        return None
    return buckets_quantile_ms(hist.bounds_s, hist.counts, q)


def buckets_quantile_ms(bounds_s: Sequence[float], counts: Sequence[float], q: float = 0.95) -> float | None:
    """:func:`quantile_ms` of bucket bounds and counts not held in a :class:`Histogram`."""
    value = histogram_quantile(q, bounds_s, counts)
    return None if value is None else value * 1000.0


#: Where a limit falls among bucket bounds, per (bounds, limit): the layouts and limits are few.
_PLACES: dict[tuple[tuple[float, ...], float], int] = {}
_PLACES_MAX = 1024


def _place(bounds_s: tuple[float, ...], limit_s: float) -> int:
    """The index of the first bound that is infinite or at least ``limit_s`` (``len(bounds_s)``
    when there is none)."""
    key = (bounds_s, limit_s)
    found = _PLACES.get(key)
    if found is None:
        found = next(
            (i for i, bound in enumerate(bounds_s) if math.isinf(bound) or limit_s <= bound), len(bounds_s)
        )
        if len(_PLACES) >= _PLACES_MAX:
            _PLACES.clear()
        _PLACES[key] = found
    return found


def count_at_or_below(hist: Histogram, limit_s: float) -> float:
    """Observations at or below ``limit_s``, interpolated within a bucket as histogram_quantile
    assumes (uniform spread inside a bucket)."""
    bounds, counts = hist.bounds_s, hist.counts
    if len(bounds) != len(counts):
        raise ValueError("histogram bounds and counts differ in length")
    i = _place(bounds, limit_s)
    # Cumulative counts are taken as never decreasing (increase() extrapolation can make them).
    previous_count = max(0.0, *counts[:i]) if i > 0 else 0.0
    if i == len(bounds) or math.isinf(bounds[i]):
        return previous_count
    running = max(previous_count, counts[i])
    previous_bound = bounds[i - 1] if i > 0 else 0.0
    width = bounds[i] - previous_bound
    if width <= 0:
        return running
    share = (limit_s - previous_bound) / width
    return previous_count + (running - previous_count) * max(0.0, min(1.0, share))


def slow_count(hist: Histogram, limit_ms: float) -> float:
    """Requests slower than ``limit_ms``."""
    return max(0.0, hist.total - count_at_or_below(hist, limit_ms / 1000.0))
