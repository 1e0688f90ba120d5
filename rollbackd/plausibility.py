"""What one interval's measurements can be: values no real service produces are bad data.

A count is impossible when it is infinite, negative, or larger than :data:`MAX_COUNT` (a trillion
requests in one interval); errors are impossible beyond the requests; a latency histogram is
impossible when its bounds are not ascending to ``+Inf``, a count is impossible, or its cumulative
counts decrease by more than float noise (then some bucket would hold more requests than the
histogram's total). Such a sample is rejected where it enters, never judged: the Prometheus source
makes the target's tick inconclusive, ``rollbackd replay`` refuses the file, and the judge treats
one that still reaches it as missing. NaN is not judged here: Prometheus uses it for "no value",
which the sources already treat as missing data. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rollbackd.model import Histogram, Sample, bounds_ok

#: Most requests (and errors, and latency observations) one interval can count: a trillion, some
#: thousand times the busiest services' traffic over the longest sensible interval.
MAX_COUNT = 1e12

#: How far cumulative bucket counts may decrease before a histogram is impossible, relative to the
#: largest count before (float noise from ``increase()`` and sums of fractional counts).
HISTOGRAM_NOISE = 1e-9

#: How far errors may exceed requests in a live source's counts, as a fraction of the requests:
#: ``increase()`` extrapolates the two counters apart. Within it, a sample counts as all failed.
ERRORS_SLACK = 0.01

#: The kinds of impossible value, each a ``kind`` of ``rollbackd_source_errors_total``.
KINDS = ("non_finite", "negative", "too_large", "errors_above_requests", "bad_histogram")


@dataclass(frozen=True, slots=True)
class Implausible:
    """Why a sample cannot be real: the ``field`` (``requests``, ``errors``,
    ``latency_buckets[3]``, ``p95_ms``), the ``kind`` (one of :data:`KINDS`) and a ``detail``
    with the value."""

    field: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


def count_problem(field: str, value: float) -> Implausible | None:
    """Why ``value`` cannot be a count of one interval, or ``None`` when it can (NaN can: it is
    missing data, decided elsewhere)."""
    if math.isinf(value):
        return Implausible(field, "non_finite", f"{value!r} is not a finite count")
    if value < 0:
        return Implausible(field, "negative", f"{value!r} is a negative count")
    if value > MAX_COUNT:
        return Implausible(field, "too_large", f"{value!r} is more than {MAX_COUNT:g} in one interval")
    return None


def histogram_problem(hist: Histogram, field: str = "latency_buckets") -> Implausible | None:
    """Why ``hist`` cannot be one interval's latency histogram, or ``None`` when it can."""
    if not bounds_ok(hist.bounds_s):
        return Implausible(
            f"{field} bounds", "bad_histogram",
            "bucket bounds must be two or more, strictly ascending, +Inf last",
        )
    # The common case in one tight loop (a thousand targets are two thousand histograms a tick);
    # only a histogram that fails it is looked at again to say why.
    highest = 0.0
    for count in hist.counts:
        if not 0.0 <= count <= MAX_COUNT or count < highest - highest * HISTOGRAM_NOISE:
            return _histogram_detail(hist, field)
        if count > highest:
            highest = count
    return None


def _histogram_detail(hist: Histogram, field: str) -> Implausible | None:
    highest = 0.0
    for i, count in enumerate(hist.counts):
        if count != count:
            continue
        problem = count_problem(f"{field}[{i}]", count)
        if problem is not None:
            return problem
        if count < highest - highest * HISTOGRAM_NOISE:
            return Implausible(
                f"{field}[{i}]", "bad_histogram",
                f"cumulative count {count:g} is below the {highest:g} of a lower bucket",
            )
        highest = max(highest, count)
    return None


def sample_problem(sample: Sample, *, errors_slack: float = 0.0) -> Implausible | None:
    """Why ``sample`` cannot be one interval of a real service, or ``None`` when it can.

    ``errors_slack`` is how far errors may exceed requests, as a fraction of the requests
    (``increase()`` extrapolates the two counters apart: the Prometheus source allows 1%, and
    judges the excess as 100% errors); 0 allows none.
    """
    requests, errors = sample.requests, sample.errors
    if not (0.0 <= requests <= MAX_COUNT and 0.0 <= errors <= MAX_COUNT):  # NaN included
        problem = count_problem("requests", requests) or count_problem("errors", errors)
        if problem is not None:
            return problem
    if errors > requests * (1.0 + errors_slack):
        return Implausible(
            "errors", "errors_above_requests", f"{errors:g} errors out of {requests:g} requests"
        )
    if sample.latency is not None:
        problem = histogram_problem(sample.latency)
        if problem is not None:
            return problem
    p95 = sample.p95_ms
    if p95 is not None and (math.isinf(p95) or p95 < 0):
        return Implausible("p95_ms", "non_finite" if math.isinf(p95) else "negative",
                           f"{p95!r} is not a latency")
    return None
