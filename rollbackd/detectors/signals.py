"""Per-signal judgements over a run of intervals: error rate, P95 latency and health.

Both metric signals reduce to proportions — failed requests, and requests slower than the P95
ceiling — judged with exact binomial tests, so a trickle of traffic never looks like a disaster
and a single bad interval never carries a verdict on its own:

* the **fast path** looks at the latest run of consecutive intervals that are each severe by
  their point estimate; ``confirm_intervals`` of them, significant together, make a severe breach;
* the **window path** pools the last ``window_s`` seconds; the breach must stay significant with
  the worst interval left out, so one bad interval cannot carry it.

Attribution compares the candidate with its reference (the concurrent baseline for a canary, the
baseline's history for blue-green and rolling) with an exact conditional test of the rate ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rollbackd.detectors import latency
from rollbackd.detectors.stats import exceeds_rate, exceeds_ratio
from rollbackd.model import Finding, HealthCheck, Sample
from rollbackd.params import TargetParams

#: Fraction of requests allowed above the P95 ceiling.
P95_TAIL = 0.05


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


def _sum(counts: Sequence[Counts]) -> Counts:
    total = ZERO
    for c in counts:
        total = total + c
    return total


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
    threshold: float  # the SLO threshold in the signal's own unit (fraction or ms)
    severe_at: float
    min_total: int
    describe: Callable[[float | None], str]


def error_spec(params: TargetParams) -> MetricSpec:
    slo = params.slo.max_error_rate

    def hits(s: Sample) -> Counts | None:
        return Counts(s.errors, s.requests) if s.requests > 0 else None

    def value(samples: Sequence[Sample]) -> float | None:
        return _sum([c for s in samples if (c := hits(s)) is not None]).rate

    return MetricSpec(
        signal="error_rate",
        unit_label="requests failed",
        hits_of=hits,
        tail=slo,
        value_of=value,
        threshold=slo,
        severe_at=slo * params.severity.error_rate_factor,
        min_total=params.detection.min_requests,
        describe=_pct,
    )


def latency_spec(params: TargetParams) -> MetricSpec:
    ceiling = params.slo.max_p95_ms

    def hits(s: Sample) -> Counts | None:
        if s.latency is None or s.latency.total <= 0:
            return None
        return Counts(latency.slow_count(s.latency, ceiling), s.latency.total)

    def value(samples: Sequence[Sample]) -> float | None:
        return latency.quantile_ms(latency.merge(s.latency for s in samples))

    def describe(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f} ms"

    return MetricSpec(
        signal="p95",
        unit_label="requests slower than the ceiling",
        hits_of=hits,
        tail=P95_TAIL,
        value_of=value,
        threshold=ceiling,
        severe_at=ceiling * params.severity.p95_factor,
        min_total=params.detection.min_latency_samples,
        describe=describe,
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one metric signal at one tick."""

    finding: Finding | None  # None when inconclusive
    inconclusive_reason: str = ""
    above: bool = False  # point estimate above the threshold (breach suspected, maybe not proven)


def _attribution(
    spec: MetricSpec,
    cand: Counts,
    reference: Sequence[Sample],
    params: TargetParams,
) -> tuple[bool, float, float | None, str]:
    ref = _sum([c for s in reference if (c := spec.hits_of(s)) is not None])
    ref_value = spec.value_of(reference) if reference else None
    if ref.total < spec.min_total:
        return False, 0.0, ref_value, "no baseline with enough traffic to compare with"
    ratio = params.detection.attribution_ratio
    p = exceeds_ratio(cand.hits, cand.total, ref.hits, ref.total, ratio)
    alpha = 1.0 - params.detection.confidence
    attributable = p < alpha
    word = "worse" if attributable else "not significantly worse"
    detail = (
        f"baseline {spec.describe(ref_value)} ({ref.hits:.0f} of {ref.total:.0f} {spec.unit_label}); "
        f"candidate {word} than {ratio:g}x baseline, confidence {_conf(p) * 100:.2f}%"
    )
    return attributable, _conf(p), ref_value, detail


def judge_metric(
    spec: MetricSpec,
    window: Sequence[Interval],
    reference_for: Callable[[Sequence[Interval]], Sequence[Sample]],
    params: TargetParams,
) -> Verdict:
    """Judge one metric signal over the intervals of the window (oldest first)."""
    alpha = 1.0 - params.detection.confidence
    k = params.detection.confirm_intervals
    scored = [
        (iv, c)
        for iv in window
        if iv.candidate is not None and (c := spec.hits_of(iv.candidate)) is not None
    ]
    pooled = _sum([c for _, c in scored])
    if pooled.total < spec.min_total:
        return Verdict(
            None,
            f"{spec.signal}: {pooled.total:.0f} {spec.unit_label.split()[0]} in the window, "
            f"fewer than the {spec.min_total} needed for a verdict",
        )

    # Fast path: the latest run of consecutive intervals that are each severe on their own.
    run: list[tuple[Interval, Counts]] = []
    for iv, c in reversed(scored):
        assert iv.candidate is not None
        value = spec.value_of([iv.candidate])
        if value is None or value < spec.severe_at:
            break
        run.append((iv, c))
    run.reverse()
    if len(run) >= k and run[-1][0] is window[-1]:
        run_counts = _sum([c for _, c in run])
        p_run = exceeds_rate(run_counts.hits, run_counts.total, spec.tail)
        if run_counts.total >= spec.min_total and p_run < alpha:
            samples = [iv.candidate for iv, _ in run if iv.candidate is not None]
            value = spec.value_of(samples)
            attributable, confidence, ref_value, detail = _attribution(
                spec, run_counts, reference_for([iv for iv, _ in run]), params
            )
            return Verdict(
                Finding(
                    signal=spec.signal,
                    value=value,
                    threshold=spec.threshold,
                    breached=True,
                    severe=True,
                    attributable=attributable,
                    confidence=_conf(p_run),
                    baseline_value=ref_value,
                    detail=(
                        f"{spec.signal} {spec.describe(value)} over the last {len(run)} intervals "
                        f"({run_counts.hits:.0f} of {run_counts.total:.0f} {spec.unit_label}), each at or "
                        f"above the severe level {spec.describe(spec.severe_at)} (SLO "
                        f"{spec.describe(spec.threshold)}), confidence {_conf(p_run) * 100:.2f}%; {detail}"
                    ),
                    since=run[0][0].t,
                ),
                above=True,
            )

    # Window path: the most significant run of recent intervals (a suffix of the window that
    # starts on an interval above the SLO), proven even with its worst interval left out. Only
    # scanned while the latest intervals are above the SLO, so a breach must still be there.
    samples = [iv.candidate for iv, _ in scored if iv.candidate is not None]
    value = spec.value_of(samples)
    recent = _sum([c for _, c in scored[-k:]])
    recent_rate = recent.rate
    above = recent_rate is not None and recent_rate > spec.tail
    best = _best_suffix(scored, spec, k, alpha) if above and len(scored) >= k else None
    if best is None:
        p_all = exceeds_rate(pooled.hits, pooled.total, spec.tail)
        level = "above the SLO, not proven" if above else "within"
        return Verdict(
            Finding(
                signal=spec.signal,
                value=value,
                threshold=spec.threshold,
                breached=False,
                severe=False,
                attributable=False,
                confidence=_conf(p_all),
                detail=(
                    f"{spec.signal} {spec.describe(value)} over the last {params.detection.window_s:g}s "
                    f"({pooled.hits:.0f} of {pooled.total:.0f} {spec.unit_label}) vs SLO "
                    f"{spec.describe(spec.threshold)}: {level}"
                ),
            ),
            above=above,
        )
    start, counts, p_best, rest_value = best
    suffix = scored[start:]
    suffix_samples = samples[start:]
    value = spec.value_of(suffix_samples)
    severe = value is not None and value >= spec.severe_at and rest_value is not None and rest_value >= spec.severe_at
    attributable, _, ref_value, detail = _attribution(
        spec, counts, reference_for([iv for iv, _ in suffix]), params
    )
    since = suffix[0][0].t
    level = "severe" if severe else "breach"
    return Verdict(
        Finding(
            signal=spec.signal,
            value=value,
            threshold=spec.threshold,
            breached=True,
            severe=severe,
            attributable=attributable,
            confidence=_conf(p_best),
            baseline_value=ref_value,
            detail=(
                f"{spec.signal} {spec.describe(value)} since t={since:g}s over {len(suffix)} intervals "
                f"({counts.hits:.0f} of {counts.total:.0f} {spec.unit_label}) vs SLO "
                f"{spec.describe(spec.threshold)}: {level}, confidence {_conf(p_best) * 100:.2f}% "
                f"(still proven without its worst interval); {detail}"
            ),
            since=since,
        ),
        above=True,
    )


#: Most suffix starts examined per tick (evenly thinned when the window holds more intervals).
MAX_SCAN = 64


def _best_suffix(
    scored: Sequence[tuple[Interval, Counts]], spec: MetricSpec, k: int, alpha: float
) -> tuple[int, Counts, float, float | None] | None:
    """The suffix of ``scored`` (at least ``k`` intervals, starting on an interval above the SLO)
    whose pooled proportion is most significantly above ``spec.tail`` and stays significant
    without its single worst interval: (start index, counts, p-value, value without the worst)."""
    n = len(scored)
    starts = [j for j in range(n - k, -1, -1) if (r := scored[j][1].rate) is not None and r > spec.tail]
    if len(starts) > MAX_SCAN:
        step = len(starts) / MAX_SCAN
        starts = [starts[int(i * step)] for i in range(MAX_SCAN)]
    suffix_sums: list[Counts] = [ZERO] * (n + 1)
    for j in range(n - 1, -1, -1):
        suffix_sums[j] = suffix_sums[j + 1] + scored[j][1]
    ranked: list[tuple[float, int]] = []
    for j in starts:
        counts = suffix_sums[j]
        if counts.total < spec.min_total:
            continue
        p = exceeds_rate(counts.hits, counts.total, spec.tail)
        if p < alpha:
            ranked.append((p, -j))
    ranked.sort()
    for p, neg_j in ranked[:3]:
        j = -neg_j
        counts = suffix_sums[j]
        worst = max(range(j, n), key=lambda i: scored[i][1].hits - scored[i][1].total * spec.tail)
        rest = Counts(counts.hits - scored[worst][1].hits, counts.total - scored[worst][1].total)
        p_rest = exceeds_rate(rest.hits, rest.total, spec.tail)
        if p_rest < alpha:
            rest_samples = [iv.candidate for i, (iv, _) in enumerate(scored) if i >= j and i != worst]
            rest_value = spec.value_of([s for s in rest_samples if s is not None])
            return j, counts, max(p, p_rest), rest_value
    return None


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
            signal="health", value=0.0, threshold=0.0, breached=False, severe=False,
            attributable=False, confidence=1.0, detail="candidate health endpoints answer 2xx",
        )
    what = ", ".join(
        f"{c.path} {c.status if c.status is not None else 'unreachable'}" + (f" ({c.error})" if c.error else "")
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
    )
