"""Per-signal judgements over a run of intervals: error rate, P95 latency and health.

Both metric signals reduce to proportions — failed requests, and requests slower than the P95
ceiling — judged with exact binomial tests, so a trickle of traffic never looks like a disaster.
Every verdict must survive discounting its single worst interval, so one bad interval is noise:
the worst interval's excess over the threshold is cut down to the runner-up's (or, while the
stretch holds fewer trials than a verdict needs, the interval is left out whole):

* the **fast path** takes the latest run of ``confirm_intervals`` or more consecutive intervals
  that are each at the severe level; proven together (and with the worst one discounted) they are a severe
  breach, decided on the second bad interval when traffic allows;
* the **change-point path** estimates where the current episode began (the split of the window
  that best explains it as "before" and "since"), and proves that the "since" part breaches the
  SLO and still does so with its worst interval discounted; an episode whose latest stretch is back
  within the SLO and significantly better than before has recovered, whatever the older data shows.
  The onset estimate leans late (:data:`ONSET_SLACK`), since the controlled grace runs from it.

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
from rollbackd.detectors.sequential import EDetector, interval_cap, share_null
from rollbackd.detectors.stats import exceeds_rate, exceeds_ratio, within_rate
from rollbackd.model import (
    Attribution,
    Conclusion,
    Finding,
    HealthCheck,
    Histogram,
    Sample,
    TimeText,
    percent,
    scenario_time,
)
from rollbackd.params import TargetParams

#: Fraction of requests allowed above the P95 ceiling.
P95_TAIL = 0.05
#: Log-likelihood slack when picking the onset: the latest split this close to the best one wins,
#: so the onset estimate leans late (a controlled rollback never comes early).
ONSET_SLACK = 2.0


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
        #: The anytime-valid tests since the release (or the latest :meth:`clear`): the signal
        #: above the SLO, and the candidate worse than ``attribution_ratio`` x its concurrent
        #: baseline. Bounded, unlike :attr:`points`, by construction rather than by the window.
        self.slo_test = EDetector()
        self.ratio_test = EDetector()

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
        self._test(interval.t, counts, base)
        self._hist_add(sample, 1.0)
        while len(self.points) > self._max_points:
            self._pop()

    def _test(self, t: float, counts: Counts, base: Counts | None) -> None:
        spec = self.spec
        cap = interval_cap(spec.alpha)
        self.slo_test = self.slo_test.observe(t, counts.hits, counts.total, spec.tail, cap=cap)
        if base is not None:
            self.ratio_test = self.ratio_test.observe(
                t,
                counts.hits,
                counts.hits + base.hits,
                share_null(counts.total, base.total, spec.ratio),
                cap=cap,
                tally=(counts.hits, counts.total, base.hits, base.total),
            )

    def carry_tests(self, other: Track) -> None:
        """Continue ``other``'s anytime-valid tests (a configuration reload that left their
        thresholds alone): the release's evidence is kept, and intervals they already counted are
        not counted again. Tests with other thresholds start over."""
        mine, theirs = self.spec, other.spec
        if (mine.tail, mine.alpha, mine.ratio) == (theirs.tail, theirs.alpha, theirs.ratio):
            self.slo_test, self.ratio_test = other.slo_test, other.ratio_test

    def evict_through(self, horizon: float) -> None:
        """Drop the intervals at or before ``horizon``."""
        while self.points and self.points[0].t <= horizon:
            self._pop()

    def clear(self) -> None:
        self.points.clear()
        self.pooled = ZERO
        self.slo_test = EDetector()
        self.ratio_test = EDetector()
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
    #: What the signal's trials are called ("requests", "latency observations").
    trials_label: str
    #: The level of each of the signal's two anytime-valid tests (its share of ``alpha``).
    alpha: float
    #: The rate ratio the candidate is tested against its baseline with.
    ratio: float
    #: The histogram a window value is read from (latency), or ``None`` for a pooled rate.
    histogram_of: Callable[[Sample], Histogram | None] | None = None


#: The metric signals judged with anytime-valid tests (error rate and latency): ``alpha`` is split
#: evenly between them, so a healthy release's false breach over both stays within ``alpha``.
METRIC_SIGNALS = 2


def signal_alpha(params: TargetParams) -> float:
    """The level of each metric signal's anytime-valid tests: its share of ``detection.alpha``."""
    return params.detection.alpha / METRIC_SIGNALS


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
        describe=percent,
        trials_label="requests",
        alpha=signal_alpha(params),
        ratio=params.detection.attribution_ratio,
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
        trials_label="latency observations",
        alpha=signal_alpha(params),
        ratio=params.detection.attribution_ratio,
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


def _without_worst(counts: Sequence[Counts], tail: float, *, trim_from: float = math.inf) -> Counts:
    """The pooled counts robust to the interval of largest excess over ``tail``: left out whole, or,
    once the intervals hold ``trim_from`` trials, with its excess cut down to the runner-up's. Either
    way one burst cannot carry a verdict alone; trimming keeps the worst interval's trials and its
    share of an even breach, which dropping it whole took from a moderate breach at low traffic (the
    generalisation benchmark's misses, 6 of 432 -> 4 of 432), while a trickle too small for a
    verdict still has to do without its worst interval."""
    pooled = pool(counts)
    if not counts:
        return pooled
    if pooled.total < trim_from:
        worst = max(counts, key=lambda c: c.hits - c.total * tail)
        return Counts(pooled.hits - worst.hits, pooled.total - worst.total)
    excess = sorted((c.hits - c.total * tail for c in counts), reverse=True)
    runner_up = max(excess[1], 0.0) if len(excess) > 1 else 0.0
    return Counts(max(0.0, pooled.hits - max(0.0, excess[0] - runner_up)), pooled.total)


def proven_above(
    counts: Sequence[Counts], tail: float, alpha: float, *, trim_from: float = math.inf
) -> float | None:
    """p-value that the pooled proportion of ``counts`` is above ``tail``, robust to the single
    worst interval (see :func:`_without_worst` for ``trim_from``); ``None`` when not proven."""
    pooled = pool(counts)
    p_all = exceeds_rate(pooled.hits, pooled.total, tail)
    if p_all >= alpha:
        return None
    rest = _without_worst(counts, tail, trim_from=trim_from)
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


def _likely_starts(scored: Sequence[Point], spec: MetricSpec, last: int) -> list[int]:
    """Where in ``scored`` a bad stretch may have begun (intervals at or before index ``last``
    above the threshold), the likeliest first: the latest split within :data:`ONSET_SLACK` of the
    best two-segment split leads (the estimate leans late), then the next three best."""
    starts = [j for j in range(last, -1, -1) if (r := scored[j].counts.rate) is not None and r > spec.tail]
    if not starts:
        return []
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
    return ordered + [j for j in sorted(starts, key=lambda j: -scores[j]) if j not in ordered][:3]


def _episode(scored: Sequence[Point], spec: MetricSpec, k: int, alpha: float) -> tuple[int, float] | None:
    """Where the current breach episode began in ``scored`` and how strongly it is proven:
    (start index, p-value), or ``None`` when no recent episode is proven."""
    for j in _likely_starts(scored, spec, len(scored) - k):
        counts = [point.counts for point in scored[j:]]
        p = proven_above(counts, spec.tail, alpha, trim_from=spec.min_total)
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


def _span(points: Sequence[Point], time_text: TimeText = scenario_time) -> str:
    """The span a number was measured over, for people: "over 60 intervals since t=120s"."""
    if not points:
        return "over no intervals"
    count = len(points)
    return f"over {count} interval{'s' if count != 1 else ''} since {time_text(points[0].t)}"


def _evidence_text(test: EDetector, alpha: float, time_text: TimeText = scenario_time) -> str:
    """How far an anytime-valid test is from rejecting: its e-value against the ``1/alpha`` it
    needs, and the span of its strongest stretch of evidence."""
    segment = test.strongest()
    if segment is None:
        return "no evidence yet"
    evidence = math.exp(min(segment.log_e, 700.0))
    return f"e-value {evidence:.3g} of the {1 / alpha:.3g} needed, since {time_text(segment.since)}"


def _sequential_attribution(
    spec: MetricSpec,
    track: Track,
    counts: Counts,
    points: Sequence[Point],
    reference_for: Callable[[Sequence[Point]], Reference],
    params: TargetParams,
    time_text: TimeText = scenario_time,
) -> tuple[Attribution, float | None, str]:
    """Who a breach proven by the anytime-valid test is blamed on: the new version when the
    two-sample test against the concurrent baseline rejects; without a concurrent baseline
    (blue-green, rolling) the exact test against the reference over ``points``."""
    test = track.ratio_test
    segment = test.strongest()
    if segment is None or segment.ref_trials <= 0:
        reference = reference_for(points or list(track.points))
        blame, _, ref_value, detail = _attribution(spec, counts, reference, params)
        return blame, ref_value, detail
    ref = Counts(segment.ref_hits, segment.ref_trials)
    cand = Counts(segment.hits, segment.trials)
    ref_value = ref.rate if spec.histogram_of is None else None
    degraded = (ref.rate or 0.0) > spec.tail
    if test.rejects(spec.alpha):
        blame, word = Attribution.ATTRIBUTABLE, "worse"
    elif ref.total < spec.min_total:
        blame, word = Attribution.NO_BASELINE, "not (yet) proven worse"
    elif degraded:
        blame, word = Attribution.BASELINE_DEGRADED, "not proven worse"
    else:
        blame, word = Attribution.PENDING, "not (yet) proven worse"
    detail = (
        f"since {time_text(segment.since)} the candidate had {cand.hits:.0f} of {cand.total:.0f} "
        f"{spec.unit_label} "
        f"({percent(cand.rate)}), the baseline {ref.hits:.0f} of {ref.total:.0f} ({percent(ref.rate)}, "
        f"{'beyond' if degraded else 'within'} the SLO's {percent(spec.tail)}); candidate {word} than "
        f"{spec.ratio:g}x baseline ({_evidence_text(test, spec.alpha, time_text)})"
    )
    return blame, ref_value, detail


def _sequential_breach(
    track: Track,
    reference_for: Callable[[Sequence[Point]], Reference],
    params: TargetParams,
    time_text: TimeText = scenario_time,
) -> Verdict | None:
    """The breach the anytime-valid test since the release proves (the window's tests did not):
    over the strongest stretch of evidence, unless the window shows it has since recovered."""
    spec = track.spec
    alpha = 1.0 - params.detection.confidence
    segment = track.slo_test.strongest()
    if segment is None or segment.trials < spec.min_total:
        return None
    if (_latest(track.points, params.detection.confirm_intervals, spec.min_total).rate or 0.0) <= spec.tail:
        return None  # the latest intervals are back within the SLO: recovering, or noise
    points = [p for p in track.points if p.t >= segment.since]
    starts = _likely_starts(points, spec, len(points) - 1)
    onset = starts[0] if starts else 0
    # The test since the release proves the rate *was* above the SLO somewhere in its stretch, and
    # that evidence outlives a fix by hours: the window's part of the stretch must still be above
    # the SLO, and neither it nor the episode since the onset may have recovered, or a noisy
    # interval after a fix would roll the fix back.
    if (pool([p.counts for p in points]).rate or 0.0) <= spec.tail:
        return None
    if any(_recovered(span, spec.tail, alpha) is not None for span in (points, points[onset:])):
        return None
    counts = Counts(segment.hits, segment.trials)
    severe = bool(points) and _severe(spec, points, alpha)
    since = points[onset].t if points else segment.since
    value = counts.rate
    if spec.histogram_of is not None:
        value = spec.value_of([p.interval.candidate for p in points if p.interval.candidate is not None])
    blame, ref_value, detail = _sequential_attribution(
        spec, track, counts, points, reference_for, params, time_text
    )
    return _breach(
        spec,
        value,
        confidence=1.0 - spec.alpha,
        since=since,
        severe=severe,
        blame=blame,
        baseline_value=ref_value,
        detail=(
            f"{spec.signal}: {counts.hits:.0f} of {counts.total:.0f} {spec.unit_label} since "
            f"{time_text(segment.since)} ({percent(counts.rate)} against the SLO's {percent(spec.tail)}), "
            f"{spec.signal} {spec.describe(value)} {_span(points, time_text)}: "
            f"{'severe' if severe else 'breach'} proven by the anytime-valid test "
            f"({_evidence_text(track.slo_test, spec.alpha, time_text)}), onset estimated at "
            f"{time_text(since)} (the grace runs from there); {detail}"
        ),
    )


def _breach(
    spec: MetricSpec,
    value: float | None,
    *,
    severe: bool,
    blame: Attribution,
    confidence: float,
    baseline_value: float | None,
    since: float,
    detail: str,
) -> Verdict:
    """The verdict of a proven breach of ``spec``'s signal."""
    return Verdict(
        Finding(
            signal=spec.signal,
            value=value,
            threshold=spec.threshold,
            breached=True,
            severe=severe,
            attributable=blame is Attribution.ATTRIBUTABLE,
            confidence=confidence,
            baseline_value=baseline_value,
            detail=detail,
            since=since,
            attribution=blame,
        ),
        above=True,
    )


def judge_metric(
    track: Track,
    latest_t: float,
    reference_for: Callable[[Sequence[Point]], Reference],
    params: TargetParams,
    *,
    time_text: TimeText = scenario_time,
) -> Verdict:
    """Judge one metric signal over its window and since the release; ``latest_t`` is the
    current tick (``time_text`` writes times in the finding's detail).

    A severe breach is decided on the window's exact tests (the fast path: the second bad
    interval). So is a manageable one during the release's first ``window_s``, when the looks are
    few. Past that, a manageable breach must also be proven by the anytime-valid test since the
    release (:mod:`rollbackd.detectors.sequential`), which bounds the false breaches of a healthy
    release by ``alpha`` however long it is watched: the peeking of a fixed-confidence test
    re-run every tick no longer adds up. And that test alone proves a breach the window cannot
    hold enough traffic for (a small effect at low traffic, given time)."""
    spec = track.spec
    alpha = 1.0 - params.detection.confidence
    k = params.detection.confirm_intervals
    scored = track.points
    pooled = track.pooled
    anytime = params.detection.anytime
    proven_since_release = anytime and track.slo_test.rejects(spec.alpha)
    first = track.slo_test.first
    young = not anytime or first is None or latest_t - first < params.detection.window_s
    if pooled.total < spec.min_total and not proven_since_release:
        return Verdict(
            None,
            f"{spec.signal}: {pooled.total:.0f} {spec.trials_label} {_span(scored, time_text)} (the last "
            f"{params.detection.window_s:g}s window), fewer than the {spec.min_total} needed for a verdict",
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
            run_counts = [p.counts for p in points[start:]]
            p_run = proven_above(run_counts, spec.tail, alpha, trim_from=spec.min_total)
            if p_run is not None and _severe(spec, points[start:], alpha):
                found = (start, p_run, True)
        if found is None and (proven_since_release or young):
            episode = _episode(points, spec, k, alpha)
            if episode is not None:
                start, p = episode
                found = (start, p, _severe(spec, points[start:], alpha))

    if found is None and proven_since_release:
        verdict = _sequential_breach(track, reference_for, params, time_text)
        if verdict is not None:
            return verdict

    if found is None:
        value = track.window_value()
        conclusion, confidence, level = _unbreached(spec, latest, pooled, above=above)
        lately = spec.describe(spec.value_of(_latest_samples(scored, k)))
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
                    f"{spec.signal} {spec.describe(value)} {_span(scored, time_text)} "
                    f"({pooled.hits:.0f} of {pooled.total:.0f} {spec.unit_label}) vs SLO "
                    f"{spec.describe(spec.threshold)}: {level} (the last {min(k, n)} intervals {lately}); "
                    "since the release: "
                    f"{_evidence_text(track.slo_test, spec.alpha, time_text)}"
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
            detail = f"{detail}; but {_span(scored, time_text)} (the whole window): {whole_detail}"
    if (
        anytime
        and blame in (Attribution.PENDING, Attribution.NO_BASELINE)
        and track.ratio_test.rejects(spec.alpha)
    ):
        # Not (yet) proven over the window, but since the release the candidate is worse.
        blame, _, detail = _sequential_attribution(
            spec, track, counts, episode_points, reference_for, params, time_text
        )
    level = "severe" if severe else "breach"
    return _breach(
        spec,
        value,
        severe=severe,
        blame=blame,
        confidence=_conf(p),
        baseline_value=ref_value,
        since=episode_points[0].t,
        detail=(
            f"{spec.signal} {spec.describe(value)} since {time_text(episode_points[0].t)} "
            f"over {len(episode_points)} intervals "
            f"({counts.hits:.0f} of {counts.total:.0f} {spec.unit_label}) vs SLO "
            f"{spec.describe(spec.threshold)} (severe at {spec.describe(spec.severe_at)}): {level}, "
            f"confidence {_conf(p) * 100:.2f}% (still proven with its worst interval discounted); {detail}"
        ),
    )


def _latest(scored: Sequence[Point], k: int, min_total: float) -> Counts:
    """The pooled counts of the latest ``k`` intervals, or of as many more as it takes to hold
    ``min_total`` trials (at low traffic two intervals say little)."""
    counts = ZERO
    for i, point in enumerate(reversed(scored)):
        if i >= k and counts.total >= min_total:
            break
        counts = counts + point.counts
    return counts


def _latest_samples(scored: Sequence[Point], k: int) -> list[Sample]:
    """The candidate's samples of the latest ``k`` scored intervals."""
    return [p.interval.candidate for p in list(scored)[-k:] if p.interval.candidate is not None]


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
        rest = _without_worst(latest, spec.tail, trim_from=spec.min_total)
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
