"""Quantiles of cumulative bucket histograms, computed exactly as PromQL's ``histogram_quantile``."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence


def histogram_quantile(q: float, bounds_s: Sequence[float], counts: Sequence[float]) -> float | None:
    """The ``q``-quantile (0 ≤ q ≤ 1) of a cumulative histogram, in the unit of ``bounds_s``.

    ``bounds_s`` are the bucket upper bounds in ascending order, the last one ``+Inf``; ``counts``
    the cumulative observation counts per bucket. As in Prometheus, the quantile is interpolated
    linearly within the bucket it falls in (the lowest bucket is taken to start at 0 when its bound
    is positive), a quantile landing in the ``+Inf`` bucket gives the highest finite bound, and
    counts that decrease (an artefact of ``increase()`` extrapolation) are made monotonic first.

    Returns ``None`` when there is no answer: no observations, fewer than two buckets, no ``+Inf``
    bucket, mismatched lengths, NaN counts, or ``q`` outside [0, 1] or NaN.
    """
    if math.isnan(q) or not 0 <= q <= 1:
        return None
    if len(bounds_s) != len(counts) or len(bounds_s) < 2 or bounds_s[-1] != math.inf:
        return None
    if any(math.isnan(c) for c in counts) or any(math.isnan(b) for b in bounds_s):
        return None
    if any(b2 <= b1 for b1, b2 in itertools.pairwise(bounds_s)):
        return None

    monotonic: list[float] = []
    highest = -math.inf
    for count in counts:
        highest = max(highest, count)
        monotonic.append(highest)

    observations = monotonic[-1]
    if observations <= 0:
        return None

    rank = q * observations
    # The first bucket (excluding +Inf) whose cumulative count reaches the rank; +Inf otherwise.
    b = next((i for i in range(len(monotonic) - 1) if monotonic[i] >= rank), len(monotonic) - 1)
    if b == len(monotonic) - 1:
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
