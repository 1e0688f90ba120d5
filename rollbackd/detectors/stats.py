"""Exact small-count statistics: binomial tails through the regularised incomplete beta function.

Counts may be fractional (``increase()`` extrapolates), so everything is continuous in its
arguments. No approximation that breaks at low counts: one error in three requests is judged as
what it is, weak evidence.

Every function here is total: no argument (NaN, infinite, negative, huge) makes one raise. A p-value
is always in [0, 1], and an argument that carries no meaning (NaN, infinity against infinity)
gives 1.0, no evidence. Counts too large for the exact computation (beyond about 1e305, where
``lgamma`` overflows) are judged with the normal approximation, which is exact in that limit.
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
        c, d = _lentz_step(m * (b - m) * x / ((qam + m2) * (a + m2)), c, d)
        h *= d * c
        c, d = _lentz_step(-(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)), c, d)
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def _lentz_step(aa: float, c: float, d: float) -> tuple[float, float]:
    """One term ``aa`` of the continued fraction: the next ``c`` and ``1 / d`` (both kept off zero)."""
    d = 1.0 + aa * d
    if abs(d) < _TINY:
        d = _TINY
    c = 1.0 + aa / c
    if abs(c) < _TINY:
        c = _TINY
    return c, 1.0 / d


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1.

    Outside its domain (a or b not positive, any argument NaN) the answer is NaN; an infinite
    ``a`` or ``b`` gives the limit (0 or 1), both infinite NaN.
    """
    if a != a or b != b or x != x or a <= 0 or b <= 0:
        return math.nan
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if math.isinf(a) or math.isinf(b):
        if math.isinf(a) and math.isinf(b):
            return math.nan
        return 0.0 if math.isinf(a) else 1.0
    try:
        log_front = (
            math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
        )
        front = math.exp(log_front)
        if x < (a + 1.0) / (a + b + 2.0):
            value = front * _betacf(a, b, x) / a
        else:
            value = 1.0 - front * _betacf(b, a, 1.0 - x) / b
    except (OverflowError, ZeroDivisionError):
        value = math.nan
    if not math.isfinite(value):
        value = _beta_cdf_normal(a, b, x)
    return min(1.0, max(0.0, value)) if value == value else math.nan


def _beta_cdf_normal(a: float, b: float, x: float) -> float:
    """I_x(a, b) by the normal approximation of Beta(a, b): for counts too large to compute
    exactly, where it is as good as exact. ``a`` and ``b`` are positive and finite."""
    scale = max(a, b)
    a1, b1 = a / scale, b / scale
    mean = a1 / (a1 + b1)
    spread = a1 * b1 / ((a1 + b1) ** 2 * (a + b + 1.0))
    sd = math.sqrt(spread) if spread > 0 else 0.0
    if sd == 0.0 or not math.isfinite(sd):
        return 0.5 if x == mean else (1.0 if x > mean else 0.0)
    return 0.5 * math.erfc(-(x - mean) / (sd * math.sqrt(2.0)))


def binom_sf(k: float, n: float, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p); continuous in ``k`` and ``n`` for fractional counts.

    Always in [0, 1]; 1.0 (no evidence) when an argument is NaN or the answer is undefined
    (``k`` and ``n`` both infinite).
    """
    if k != k or n != n or p != p:
        return 1.0
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    value = betainc(k, n - k + 1.0, p)
    return min(1.0, max(0.0, value)) if value == value else 1.0


def exceeds_rate(events: float, trials: float, rate: float) -> float:
    """p-value of "the true event rate is above ``rate``" given ``events`` in ``trials``.

    Small means strong evidence that the rate is above ``rate``. Always in [0, 1]; 1.0 when an
    argument is NaN.
    """
    if events != events or trials != trials or rate != rate or trials <= 0:
        return 1.0
    events = min(max(events, 0.0), trials)
    return binom_sf(events, trials, rate)


def exceeds_ratio(events_a: float, trials_a: float, events_b: float, trials_b: float, ratio: float) -> float:
    """p-value of "rate A is more than ``ratio`` times rate B" (exact conditional test).

    Given the total number of events, the events of A follow a binomial with success probability
    ``ratio·n_a / (ratio·n_a + n_b)`` under the null hypothesis that rate A = ratio times rate B.
    Valid at low counts, including zero events on B. Always in [0, 1]; 1.0 when an argument is
    NaN or the share is undefined (infinite trials on both sides).
    """
    if any(v != v for v in (events_a, trials_a, events_b, trials_b, ratio)):
        return 1.0
    if trials_a <= 0 or trials_b <= 0:
        return 1.0
    events_a = min(max(events_a, 0.0), trials_a)
    events_b = min(max(events_b, 0.0), trials_b)
    total = events_a + events_b
    if events_a <= 0:
        return 1.0
    if ratio <= 0:
        return 0.0  # any event of A is more than none
    weighted = ratio * trials_a
    if math.isfinite(weighted + trials_b):
        share = weighted / (weighted + trials_b)
    else:  # the same share, written so that huge counts do not overflow
        share = 1.0 / (1.0 + (trials_b / trials_a) / ratio)
    return binom_sf(events_a, total, share)


def within_rate(events: float, trials: float, rate: float) -> float:
    """p-value of "the true event rate is at or above ``rate``" given ``events`` in ``trials``.

    Small means strong evidence that the rate is below ``rate`` (e.g. an error rate proven within
    its SLO). Always in [0, 1]; 1.0 (no evidence) when an argument is NaN or there are no trials.
    """
    if events != events or trials != trials or rate != rate or trials <= 0:
        return 1.0
    if rate >= 1.0:
        return 0.0 if events < trials else 1.0
    if rate <= 0.0:
        return 1.0
    events = min(max(events, 0.0), trials)
    if events == 0.0:
        # P(X = 0), in closed form: the healthy case of every tick (no slow request), which the
        # incomplete beta function below would take about ten times longer over.
        return math.pow(1.0 - rate, trials)
    # P(X <= events) = 1 - P(X >= events + 1)
    return min(1.0, max(0.0, 1.0 - binom_sf(events + 1.0, trials, rate)))
