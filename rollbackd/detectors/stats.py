"""Exact small-count statistics: binomial tails through the regularised incomplete beta function.

Counts may be fractional (``increase()`` extrapolates), so everything is continuous in its
arguments. No approximation that breaks at low counts: one error in three requests is judged as
what it is, weak evidence.
"""

from __future__ import annotations

import math

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 500


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    qab = a + b
    qap = a + 1.0
    qam = a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    if abs(d) < _TINY:
        d = _TINY
    d = 1.0 / d
    h = d
    for m in range(1, _MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        if abs(d) < _TINY:
            d = _TINY
        c = 1.0 + aa / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        if abs(d) < _TINY:
            d = _TINY
        c = 1.0 + aa / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if a <= 0 or b <= 0:
        raise ValueError("betainc needs a > 0 and b > 0")
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def binom_sf(k: float, n: float, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p); continuous in ``k`` and ``n`` for fractional counts."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    return min(1.0, max(0.0, betainc(k, n - k + 1.0, p)))


def exceeds_rate(events: float, trials: float, rate: float) -> float:
    """p-value of "the true event rate is above ``rate``" given ``events`` in ``trials``.

    Small means strong evidence that the rate is above ``rate``.
    """
    if trials <= 0:
        return 1.0
    events = min(max(events, 0.0), trials)
    return binom_sf(events, trials, rate)


def exceeds_ratio(events_a: float, trials_a: float, events_b: float, trials_b: float, ratio: float) -> float:
    """p-value of "rate A is more than ``ratio`` times rate B" (exact conditional test).

    Given the total number of events, the events of A follow a binomial with success probability
    ``ratio·n_a / (ratio·n_a + n_b)`` under the null hypothesis that rate A = ratio times rate B.
    Valid at low counts, including zero events on B.
    """
    if trials_a <= 0 or trials_b <= 0:
        return 1.0
    events_a = min(max(events_a, 0.0), trials_a)
    events_b = min(max(events_b, 0.0), trials_b)
    total = events_a + events_b
    if events_a <= 0:
        return 1.0
    share = ratio * trials_a / (ratio * trials_a + trials_b)
    return binom_sf(events_a, total, share)
