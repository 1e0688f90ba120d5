"""Per-signal judgements over a run of intervals: error rate, P95 latency and health.

Both metric signals reduce to proportions — failed requests, and requests slower than the P95
ceiling — judged with exact binomial tests, so a trickle of traffic never looks like a disaster.
Every verdict must survive leaving its single worst interval out, so one bad interval is noise:

* the **fast path** takes the latest run of ``confirm_intervals`` or more consecutive intervals
  that are each at the severe level; proven together (and without the worst one) they are a severe
  breach, decided on the second bad interval when traffic allows;
* the **change-point path** estimates where the current episode began (the split of the window
  that best explains it as "before" and "since"), and proves that the "since" part breaches the
  SLO and still does so without its worst interval; an episode whose latest stretch is back within
  the SLO and significantly better than before has recovered, whatever the older data shows.

Severity needs confidence too: severe means the estimate is at the severe level and the rate is
proven above half of it, not merely that a noisy point estimate touched it.

Attribution compares the candidate with its reference (the concurrent baseline for a canary, the
baseline's history for blue-green and rolling) with an exact conditional test of the rate ratio.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from rollbackd.detectors import latency
from rollbackd.detectors.stats import exceeds_rate, exceeds_ratio, within_rate
from rollbackd.model import (
    Attribution,
    Conclusion,
    Finding,
    HealthCheck,
    Histogram,
    Sample,
    TimeText,
    scenario_time,
)
from rollbackd.params import TargetParams

#: Fraction of requests allowed above the P95 ceiling.
P95_TAIL = 0.05
#: Log-likelihood slack when picking the onset: the latest split this close to the best one wins,
#: so the onset estimate leans late (a controlled rollback never comes early).
ONSET_SLACK = 1.0


@dataclass(frozen=True, slots=True)
class Counts:
    """A proportion: ``hits`` (errors, or slow requests) out of ``total``."""

    hits: float
    total: float

    @property
    def rate(self) -> float | None:
        return self.hits / self.total if self.total > 0 else None

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.hits + other.hits, self.total + other.total)


ZERO = Counts(0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Interval:
    """One tick reduced to what the signals need."""

    t: float
    candidate: Sample | None
    baseline: Sample | None


@dataclass(frozen=True, slots=True)
class Point:
    """One interval as a metric signal scores it, computed once when the interval arrives."""

    interval: Interval
    counts: Counts  # hits against the SLO threshold
    severe: Counts | None  # hits against the severe level
    value: float | None  # this interval's own estimate (rate, or P95 in ms)
    #: The concurrent baseline's hits against the SLO threshold (``None`` without baseline traffic):
    #: counted once as the interval arrives, not again for each attribution.
    base: Counts | None = None

    @property
    def t(self) -> float:
        return self.interval.t


@dataclass(frozen=True, slots=True)
class Reference:
    """What a candidate is compared with: baseline samples and, when already counted (the
    concurrent baseline's, from :attr:`Point.base`), their pooled hits."""

    samples: Sequence[Sample]
    hits: Counts | None = None


class Track:
    """One metric signal's bounded window of scored intervals, with running totals so a tick
    costs the same however long the window is."""

    def __init__(self, spec: MetricSpec, *, max_points: int) -> None:
        self.spec = spec
        self.points: deque[Point] = deque()
        self.pooled = ZERO
        self._max_points = max_points
        self._bounds: tuple[float, ...] | None = None
        self._hist: list[float] = []
        self._evictions = 0

    def add(self, interval: Interval) -> None:
        sample = interval.candidate
        if sample is None or (counts := self.spec.hits_of(sample)) is None:
            return
        value = self.spec.point_value(sample)
        # The error rate's severe level counts the same hits: share them rather than copy them.
        severe = counts if self.spec.severe_hits_of is self.spec.hits_of else self.spec.severe_hits_of(sample)
        baseline = interval.baseline
        base = self.spec.hits_of(baseline) if baseline is not None and baseline.requests > 0 else None
        self.points.append(Point(interval, counts, severe, value, base))
        self.pooled = self.pooled + counts
        self._hist_add(sample, 1.0)
        while len(self.points) > self._max_points:
            self._pop()

    def evict_through(self, horizon: float) -> None:
        """Drop the intervals at or before ``horizon``."""
        while self.points and self.points[0].t <= horizon:
            self._pop()

    def clear(self) -> None:
        self.points.clear()
        self.pooled = ZERO
        self._bounds = None
        self._hist = []

    def _pop(self) -> None:
        old = self.points.popleft()
        self.pooled = Counts(
            max(0.0, self.pooled.hits - old.counts.hits), max(0.0, self.pooled.total - old.counts.total)
        )
        if old.interval.candidate is not None:
            self._hist_add(old.interval.candidate, -1.0)
        self._evictions += 1
        if self._evictions % 1024 == 0:
            self._recount()

    def _recount(self) -> None:
        """Running sums drift with fractional counts; rebuild them now and then."""
        self.pooled = pool([p.counts for p in self.points])
        self._bounds, self._hist = None, []
        for p in self.points:
            if p.interval.candidate is not None:
                self._hist_add(p.interval.candidate, 1.0)

    def _hist_add(self, sample: Sample, sign: float) -> None:
        if self.spec.histogram_of is None:
            return
        hist = self.spec.histogram_of(sample)
        if hist is None:
            return
        if self._bounds is None:
            self._bounds = hist.bounds_s
            self._hist = [0.0] * len(hist.bounds_s)
        if hist.bounds_s != self._bounds:
            return
        if sign > 0:
            self._hist = [total + count for total, count in zip(self._hist, hist.counts, strict=True)]
        else:
            self._hist = [total - count for total, count in zip(self._hist, hist.counts, strict=True)]

    def window_value(self) -> float | None:
        if self.spec.histogram_of is None:
            return self.pooled.rate
        if self._bounds is None:
            return None
        return latency.buckets_quantile_ms(self._bounds, [c if c > 0.0 else 0.0 for c in self._hist])


def pool(counts: Iterable[Counts]) -> Counts:
    """The proportions of ``counts`` added together."""
    hits = total = 0.0
    for c in counts:
        hits += c.hits
        total += c.total
    return Counts(hits, total)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.2f}%"


def _conf(p_value: float) -> float:
    return max(0.0, min(1.0, 1.0 - p_value))


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """How one metric signal reads a sample and what its thresholds are."""

    signal: str
    unit_label: str
    hits_of: Callable[[Sample], Counts | None]
    tail: float  # the proportion that, when exceeded, breaches the SLO
    value_of: Callable[[Sequence[Sample]], float | None]
    #: ``value_of`` a single sample, without pooling.
    point_value: Callable[[Sample], float | None]
    threshold: float  # the SLO threshold in the signal's own unit (fraction or ms)
    severe_at: float
    severe_hits_of: Callable[[Sample], Counts | None]  # hits against the severe level
    severe_tail: float
    min_total: int
    describe: Callable[[float | None], str]
    #: The histogram a window value is read from (latency), or ``None`` for a pooled rate.
    histogram_of: Callable[[Sample], Histogram | None] | None = None


def error_spec(params: TargetParams) -> MetricSpec:
    slo = params.slo.max_error_rate

    def hits(s: Sample) -> Counts | None:
        return Counts(s.errors, s.requests) if s.requests > 0 else None

    def value(samples: Sequence[Sample]) -> float | None:
        return pool([c for s in samples if (c := hits(s)) is not None]).rate

    def point_value(s: Sample) -> float | None:
        return s.error_rate

    return MetricSpec(
        signal="error_rate",
        unit_label="requests failed",
        hits_of=hits,
        tail=slo,
        value_of=value,
        point_value=point_value,
        threshold=slo,
        severe_at=slo * params.severity.error_rate_factor,
        severe_hits_of=hits,
        severe_tail=slo * params.severity.error_rate_factor,
        min_total=params.detection.min_requests,
        describe=_pct,
    )


def latency_spec(params: TargetParams) -> MetricSpec:
    ceiling = params.slo.max_p95_ms
    severe_ms = ceiling * params.severity.p95_factor

    def slower_than(limit_ms: float) -> Callable[[Sample], Counts | None]:
        def hits(s: Sample) -> Counts | None:
            if s.latency is None or s.latency.total <= 0:
                return None
            return Counts(latency.slow_count(s.latency, limit_ms), s.latency.total)

        return hits

    hits = slower_than(ceiling)

    def value(samples: Sequence[Sample]) -> float | None:
        return latency.quantile_ms(latency.merge(s.latency for s in samples))

    def point_value(s: Sample) -> float | None:
        return latency.quantile_ms(s.latency) if s.latency is not None and s.latency.counts else None

    def describe(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f} ms"

    return MetricSpec(
        signal="p95",
        unit_label="requests slower than the ceiling",
        hits_of=hits,
        tail=P95_TAIL,
        value_of=value,
        point_value=point_value,
        threshold=ceiling,
        severe_at=severe_ms,
        severe_hits_of=slower_than(severe_ms),
        severe_tail=P95_TAIL,
        min_total=params.detection.min_latency_samples,
        describe=describe,
        histogram_of=lambda s: s.latency,
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one metric signal at one tick."""

    finding: Finding | None  # None when inconclusive
    inconclusive_reason: str = ""
    above: bool = False  # the latest intervals are above the threshold (breach suspected)


def _attribution(
    spec: MetricSpec,
    cand: Counts,
    reference: Reference,
    params: TargetParams,
) -> tuple[Attribution, float, float | None, str]:
    """Who ``cand`` (a proven breach) is blamed on, compared with ``reference``: the state, the
    confidence that the candidate is worse than ``attribution_ratio`` times the reference, the
    reference's value and the explanation."""
    samples = reference.samples
    ref = reference.hits
    if ref is None:
        ref = pool([c for s in samples if (c := spec.hits_of(s)) is not None])
    ref_value = spec.value_of(samples) if samples else None
    if ref.total < spec.min_total:
        return Attribution.NO_BASELINE, 0.0, ref_value, "no baseline with enough traffic to compare with"
    ratio = params.detection.attribution_ratio
    p = exceeds_ratio(cand.hits, cand.total, ref.hits, ref.total, ratio)
    alpha = 1.0 - params.detection.confidence
    if p < alpha:
        state, word = Attribution.ATTRIBUTABLE, "worse"
    elif (ref.rate or 0.0) > spec.tail:
        state, word = Attribution.BASELINE_DEGRADED, "not significantly worse"
    else:
        state, word = Attribution.PENDING, "not (yet) significantly worse"
    degraded = "beyond" if (ref.rate or 0.0) > spec.tail else "within"
    detail = (
        f"baseline {spec.describe(ref_value)} ({ref.hits:.0f} of {ref.total:.0f} {spec.unit_label}, "
        f"{degraded} the SLO); candidate {word} than {ratio:g}x baseline, confidence {_conf(p) * 100:.2f}%"
    )
    return state, _conf(p), ref_value, detail


def _without_worst(counts: Sequence[Counts], tail: float) -> Counts:
    """The pooled counts with the interval of largest excess over ``tail`` left out."""
    pooled = pool(counts)
    if not counts:
        return pooled
    worst = max(counts, key=lambda c: c.hits - c.total * tail)
    return Counts(pooled.hits - worst.hits, pooled.total - worst.total)


def proven_above(counts: Sequence[Counts], tail: float, alpha: float) -> float | None:
    """p-value that the pooled proportion of ``counts`` is above ``tail``, robust to the single
    worst interval; ``None`` when not proven."""
    pooled = pool(counts)
    p_all = exceeds_rate(pooled.hits, pooled.total, tail)
    if p_all >= alpha:
        return None
    rest = _without_worst(counts, tail)
    p_rest = exceeds_rate(rest.hits, rest.total, tail)
    if p_rest >= alpha:
        return None
    return max(p_all, p_rest)


def _severe(spec: MetricSpec, points: Sequence[Point], alpha: float) -> bool:
    """Severe: at the severe level by its estimate, and proven (without the worst interval) to be
    above half of it, so a noisy estimate of a manageable breach is not called severe."""
    counts = [p.severe for p in points if p.severe is not None]
    if not counts:
        return False
    pooled = pool(counts)
    return (pooled.rate or 0.0) >= spec.severe_tail and proven_above(
        counts, spec.severe_tail / 2, alpha
    ) is not None


def _loglik(c: Counts) -> float:
    """Binomial log-likelihood of ``c`` at its own maximum-likelihood rate."""
    h, n = c.hits, c.total
    if n <= 0:
        return 0.0
    ll = 0.0
    if h > 0:
        ll += h * _log_share(h, n)
    if n - h > 0:
        ll += (n - h) * _log_share(n - h, n)
    return ll


def _log_share(part: float, whole: float) -> float:
    """``log(part / whole)`` for positive ``part`` and ``whole``, also when the share is too small
    for a float (never a math domain error)."""
    share = part / whole
    if share > 0:
        return math.log(share)
    return math.log(part) - math.log(whole)


#: Most split points examined per tick (evenly thinned when the window holds more intervals).
MAX_SCAN = 64


def _episode(scored: Sequence[Point], spec: MetricSpec, k: int, alpha: float) -> tuple[int, float] | None:
    """Where the current breach episode began in ``scored`` and how strongly it is proven:
    (start index, p-value), or ``None`` when no recent episode is proven."""
    n = len(scored)
    starts = [j for j in range(n - k, -1, -1) if (r := scored[j].counts.rate) is not None and r > spec.tail]
    if not starts:
        return None
    if len(starts) > MAX_SCAN:
        step = len(starts) / MAX_SCAN
        starts = [starts[int(i * step)] for i in range(MAX_SCAN)]
    prefix: list[Counts] = [ZERO]
    for point in scored:
        prefix.append(prefix[-1] + point.counts)
    whole = prefix[-1]

    def split_ll(j: int) -> float:
        before = prefix[j]
        since = Counts(whole.hits - before.hits, whole.total - before.total)
        return _loglik(before) + _loglik(since)

    scores = {j: split_ll(j) for j in starts}
    best = max(scores.values())
    ordered = sorted((j for j in starts if scores[j] >= best - ONSET_SLACK), reverse=True)
    ordered += [j for j in sorted(starts, key=lambda j: -scores[j]) if j not in ordered][:3]
    for j in ordered:
        counts = [point.counts for point in scored[j:]]
        p = proven_above(counts, spec.tail, alpha)
        if p is None:
            continue
        if _recovered(scored[j:], spec.tail, alpha) is not None:
            continue
        return j, p
    return None


def _recovered(episode: Sequence[Point], tail: float, alpha: float) -> float | None:
    """When the episode's most recent stretch is back within ``tail`` and significantly better
    than what came before it (the best two-segment split), the time it recovered; else ``None``."""
    n = len(episode)
    if n < 2:
        return None
    prefix: list[Counts] = [ZERO]
    for point in episode:
        prefix.append(prefix[-1] + point.counts)
    whole = prefix[-1]
    splits = list(range(1, n))
    if len(splits) > MAX_SCAN:
        step = len(splits) / MAX_SCAN
        splits = [splits[int(i * step)] for i in range(MAX_SCAN)]
    best_r: int | None = None
    best_ll = -math.inf
    for r in splits:
        before = prefix[r]
        after = Counts(whole.hits - before.hits, whole.total - before.total)
        if after.total <= 0 or (after.rate or 0.0) > tail:
            continue
        ll = _loglik(before) + _loglik(after)
        if ll > best_ll:
            best_ll, best_r = ll, r
    if best_r is None:
        return None
    before = prefix[best_r]
    after = Counts(whole.hits - before.hits, whole.total - before.total)
    if exceeds_ratio(before.hits, before.total, after.hits, after.total, 1.0) < alpha:
        return episode[best_r].t
    return None


def judge_metric(
    track: Track,
    latest_t: float,
    reference_for: Callable[[Sequence[Point]], Reference],
    params: TargetParams,
    *,
    time_text: TimeText = scenario_time,
) -> Verdict:
    """Judge one metric signal over its window; ``latest_t`` is the current tick (``time_text``
    writes the breach's start in the finding's detail)."""
    spec = track.spec
    alpha = 1.0 - params.detection.confidence
    k = params.detection.confirm_intervals
    scored = track.points
    pooled = track.pooled
    if pooled.total < spec.min_total:
        return Verdict(
            None,
            f"{spec.signal}: {pooled.total:.0f} {spec.unit_label.split()[0]} in the window, "
            f"fewer than the {spec.min_total} needed for a verdict",
        )
    n = len(scored)
    latest = [scored[i].counts for i in range(max(0, n - k), n)]
    recent = pool(latest)
    above = (recent.rate or 0.0) > spec.tail

    found: tuple[int, float, bool] | None = None
    if above and n >= k:
        points = list(scored)
        # Fast path: the latest run of consecutive intervals that are each at the severe level.
        run = 0
        for point in reversed(points):
            if point.value is None or point.value < spec.severe_at:
                break
            run += 1
        if run >= k and points[-1].t == latest_t:
            start = n - run
            p_run = proven_above([p.counts for p in points[start:]], spec.tail, alpha)
            if p_run is not None and _severe(spec, points[start:], alpha):
                found = (start, p_run, True)
        if found is None:
            episode = _episode(points, spec, k, alpha)
            if episode is not None:
                start, p = episode
                found = (start, p, _severe(spec, points[start:], alpha))

    if found is None:
        value = track.window_value()
        conclusion, confidence, level = _unbreached(spec, latest, pooled, above=above)
        return Verdict(
            Finding(
                signal=spec.signal,
                value=value,
                threshold=spec.threshold,
                breached=False,
                severe=False,
                attributable=False,
                confidence=confidence,
                detail=(
                    f"{spec.signal} {spec.describe(value)} over the last {params.detection.window_s:g}s "
                    f"({pooled.hits:.0f} of {pooled.total:.0f} {spec.unit_label}) vs SLO "
                    f"{spec.describe(spec.threshold)}: {level}"
                ),
                conclusion=conclusion,
            ),
            above=above,
        )

    start, p, severe = found
    episode_points = list(scored)[start:]
    episode_ivs = [point.interval for point in episode_points]
    counts = pool([point.counts for point in episode_points])
    value = spec.value_of([iv.candidate for iv in episode_ivs if iv.candidate is not None])
    # Attribution must hold over the episode and over the whole window, so a cherry-picked
    # stretch of noise cannot blame the release.
    blame, _, ref_value, detail = _attribution(spec, counts, reference_for(episode_points), params)
    if blame is Attribution.ATTRIBUTABLE and start > 0:  # a whole-window episode was judged over it
        whole, _, _, whole_detail = _attribution(spec, pooled, reference_for(list(scored)), params)
        if whole is not Attribution.ATTRIBUTABLE:
            blame = whole
            detail = f"{detail}; but over the whole window: {whole_detail}"
    since = episode_points[0].t
    level = "severe" if severe else "breach"
    return Verdict(
        Finding(
            signal=spec.signal,
            value=value,
            threshold=spec.threshold,
            breached=True,
            severe=severe,
            attributable=blame is Attribution.ATTRIBUTABLE,
            confidence=_conf(p),
            baseline_value=ref_value,
            detail=(
                f"{spec.signal} {spec.describe(value)} since {time_text(since)} "
                f"over {len(episode_ivs)} intervals "
                f"({counts.hits:.0f} of {counts.total:.0f} {spec.unit_label}) vs SLO "
                f"{spec.describe(spec.threshold)} (severe at {spec.describe(spec.severe_at)}): {level}, "
                f"confidence {_conf(p) * 100:.2f}% (still proven without its worst interval); {detail}"
            ),
            since=since,
            attribution=blame,
        ),
        above=True,
    )


def _unbreached(
    spec: MetricSpec, latest: Sequence[Counts], pooled: Counts, *, above: bool
) -> tuple[Conclusion, float, str]:
    """What a signal without a proven breach concludes, with the confidence of that conclusion and
    its words for the detail: the latest ``k`` intervals above the SLO but not proven (the
    confidence that they are above it, robust to the worst one as a breach must be, is below the
    required level); the latest intervals within the SLO while the whole window is above it (the
    confidence that they are within it); or the window within the SLO (the confidence that it is)."""
    recent = pool(latest)
    if above:
        rest = _without_worst(latest, spec.tail)
        p = max(
            exceeds_rate(recent.hits, recent.total, spec.tail), exceeds_rate(rest.hits, rest.total, spec.tail)
        )
        return Conclusion.UNPROVEN, _conf(p), f"above the SLO, not proven (confidence {_conf(p) * 100:.2f}%)"
    if (pooled.rate or 0.0) > spec.tail:
        p = within_rate(recent.hits, recent.total, spec.tail)
        words = f"the latest intervals within the SLO (confidence {_conf(p) * 100:.2f}%), the window not"
        return Conclusion.WITHIN_LATELY, _conf(p), words
    p = within_rate(pooled.hits, pooled.total, spec.tail)
    return Conclusion.WITHIN, _conf(p), f"within (confidence {_conf(p) * 100:.2f}%)"


def recovery_proven(track: Track, after: float, params: TargetParams) -> bool | None:
    """Whether the signal is proven back within the SLO by the intervals after ``after`` (the
    latest tick whose breach was proven): their pooled counts are below the threshold at the
    configured confidence, and the latest ``confirm_intervals`` are not above it. ``None`` when the
    window holds no data of this signal at all (nothing to say, for or against)."""
    if not track.points:
        return None
    spec = track.spec
    alpha = 1.0 - params.detection.confidence
    k = params.detection.confirm_intervals
    since: list[Counts] = []
    for point in reversed(track.points):
        if point.t <= after:
            break
        since.append(point.counts)
    since.reverse()
    if not since:
        return False
    if (pool(since[-k:]).rate or 0.0) > spec.tail:
        return False
    counts = pool(since)
    if counts.total <= 0 or (counts.rate or 0.0) >= spec.tail:
        return False
    return within_rate(counts.hits, counts.total, spec.tail) < alpha


def _failing(checks: tuple[HealthCheck, ...]) -> list[HealthCheck]:
    return [c for c in checks if not c.ok]


def judge_health(
    history: Sequence[tuple[float, tuple[tuple[HealthCheck, ...] | None, tuple[HealthCheck, ...] | None]]],
    params: TargetParams,
) -> Finding | None:
    """``history`` is (t, (candidate checks, baseline checks)) per tick, oldest first. A failing
    candidate endpoint on ``confirm_intervals`` consecutive probed ticks is a (severe) breach;
    it is attributable unless the baseline's endpoints fail too."""
    if not history or history[-1][1][0] is None:
        return None
    k = params.detection.confirm_intervals
    run = 0
    first_failing: float | None = None
    for t, (cand, _) in reversed(history):
        if cand is None:
            continue
        if not _failing(cand):
            break
        run += 1
        first_failing = t
    latest_cand, latest_base = history[-1][1]
    assert latest_cand is not None
    failing = _failing(latest_cand)
    if not failing:
        return Finding(
            signal="health",
            value=0.0,
            threshold=0.0,
            breached=False,
            severe=False,
            attributable=False,
            confidence=1.0,
            detail="candidate health endpoints answer 2xx",
        )
    what = ", ".join(
        f"{c.path} {c.status if c.status is not None else 'unreachable'}"
        + (f" ({c.error})" if c.error else "")
        for c in failing
    )
    baseline_failing = bool(latest_base and _failing(latest_base))
    breached = run >= k
    severe = breached and params.severity.health_failure_severe
    detail = f"candidate health failing for {run} consecutive intervals: {what}"
    if baseline_failing:
        detail += "; the baseline's health endpoints fail too"
    elif latest_base:
        detail += "; baseline endpoints healthy"
    return Finding(
        signal="health",
        value=float(len(failing)),
        threshold=0.0,
        breached=breached,
        severe=severe,
        attributable=breached and not baseline_failing,
        confidence=1.0 if breached else 0.0,
        detail=detail,
        since=first_failing if breached else None,
        attribution=(
            None if not breached
            else Attribution.BASELINE_DEGRADED if baseline_failing
            else Attribution.ATTRIBUTABLE
        ),
    )
