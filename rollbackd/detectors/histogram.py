"""Quantiles of cumulative bucket histograms, computed exactly as PromQL's ``histogram_quantile``."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

#: Bucket bounds already checked, with the verdict. Histograms share a handful of bound tuples (one
#: per bucket layout), so checking each layout once takes the checks out of the per-tick work.
_CHECKED: dict[tuple[float, ...], bool] = {}
_CHECKED_MAX = 256


def bounds_ok(bounds_s: Sequence[float]) -> bool:
    """Whether ``bounds_s`` can hold a histogram: two or more strictly ascending bounds, no NaN,
    ``+Inf`` last."""
    key = bounds_s if type(bounds_s) is tuple else None
    if key is not None:
        known = _CHECKED.get(key)
        if known is not None:
            return known
    ok = (
        len(bounds_s) >= 2
        and bounds_s[-1] == math.inf
        and not any(math.isnan(b) for b in bounds_s)
        and all(b1 < b2 for b1, b2 in itertools.pairwise(bounds_s))
    )
    if key is not None:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[key] = ok
    return ok


def histogram_quantile(q: float, bounds_s: Sequence[float], counts: Sequence[float]) -> float | None:
    """The ``q``-quantile (0 ≤ q ≤ 1) of a cumulative histogram, in the unit of ``bounds_s``.

    ``bounds_s`` are the bucket upper bounds in ascending order, the last one ``+Inf``; ``counts``
    the cumulative observation counts per bucket. As in Prometheus, the quantile is interpolated
    linearly within the bucket it falls in (the lowest bucket is taken to start at 0 when its bound
    is positive), a quantile landing in the ``+Inf`` bucket gives the highest finite bound, and
    counts that decrease (an artefact of ``increase()`` extrapolation) are made monotonic first.

    Returns ``None`` when there is no answer: no observations, fewer than two buckets, no ``+Inf``
    bucket, mismatched lengths, NaN or infinite counts (or counts whose sum overflows), or ``q``
    outside [0, 1] or NaN.
    """
    if not 0 <= q <= 1:  # NaN included
        return None
    if len(bounds_s) != len(counts) or not bounds_ok(bounds_s):
        return None
    total = sum(counts)
    if not math.isfinite(total):  # NaN or infinite counts (or a sum too large for a float)
        return None

    monotonic = list(itertools.accumulate(counts, max))
    last = len(monotonic) - 1
    observations = monotonic[last]
    if observations <= 0:
        return None

    rank = q * observations
    # The first bucket (excluding +Inf) whose cumulative count reaches the rank; +Inf otherwise.
    b = bisect.bisect_left(monotonic, rank, 0, last)
    if b == last:
        return float(bounds_s[-2])
    if b == 0 and bounds_s[0] <= 0:
        return float(bounds_s[0])

    bucket_start = 0.0
    bucket_end = float(bounds_s[b])
    count = monotonic[b]
    if b > 0:
        bucket_start = float(bounds_s[b - 1])
        count -= monotonic[b - 1]
        rank -= monotonic[b - 1]
    if count <= 0:
        return bucket_start
    return bucket_start + (bucket_end - bucket_start) * (rank / count)
